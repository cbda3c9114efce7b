"""The language model: a decoder-only Transformer whose attention type is set per layer.

With `attention_types=("full",)` this is the paper's baseline Transformer (pre-LayerNorm,
causal full attention, learned positions); LSH and local layers come from the same config.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from reformer import attention


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model's fields of `config.model`, frozen so modules can hold them."""

    vocab_size: int
    d_model: int
    d_ff: int
    n_heads: int
    d_head: int
    n_layers: int
    attention_types: tuple[str, ...]
    lsh_chunk_len: int
    local_chunk_len: int
    n_buckets: int
    n_hashes: int
    causal: bool
    reversible: bool
    ff_chunk_size: int
    positional: str
    max_len: int
    dropout: float
    attention_dropout: float
    dtype: str

    @classmethod
    def from_config(cls, model: ml_collections.ConfigDict) -> ModelConfig:
        fields = {f.name: model[f.name] for f in dataclasses.fields(cls)}
        fields["attention_types"] = tuple(fields["attention_types"])
        return cls(**fields)

    def attention_type(self, layer: int) -> str:
        return self.attention_types[layer % len(self.attention_types)]

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)


def make_attention(cfg: ModelConfig, kind: str, name: str) -> nn.Module:
    """The attention module of one layer, by type."""
    common = dict(
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        causal=cfg.causal,
        dropout_rate=cfg.attention_dropout,
        dtype=cfg.jnp_dtype,
        name=name,
    )
    if kind == "full":
        return attention.FullSelfAttention(**common)
    if kind == "lsh":
        return attention.LSHSelfAttention(
            chunk_len=cfg.lsh_chunk_len,
            n_buckets=cfg.n_buckets or None,
            n_hashes=cfg.n_hashes,
            **common,
        )
    if kind == "local":
        return attention.LocalSelfAttention(chunk_len=cfg.local_chunk_len, **common)
    raise ValueError(f"unknown attention type {kind!r}")


class FeedForward(nn.Module):
    """Position-wise Dense -> GELU -> Dense."""

    d_ff: int
    dropout: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, *, deterministic: bool) -> jax.Array:
        h_BxLxF = nn.Dense(self.d_ff, dtype=self.dtype, name="wi")(x_BxLxD)
        h_BxLxF = nn.gelu(h_BxLxF)
        h_BxLxF = nn.Dropout(self.dropout)(h_BxLxF, deterministic=deterministic)
        return nn.Dense(x_BxLxD.shape[-1], dtype=self.dtype, name="wo")(h_BxLxF)


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + Attention(LN(x)), then x + FeedForward(LN(x))."""

    cfg: ModelConfig
    kind: str

    @nn.compact
    def __call__(self, x_BxLxD, mask_BxL, *, deterministic: bool, n_hashes: int | None):
        cfg = self.cfg
        h = nn.LayerNorm(dtype=cfg.jnp_dtype, name="attn_norm")(x_BxLxD)
        h, _ = make_attention(cfg, self.kind, "attention")(
            h, mask_BxL, deterministic=deterministic, n_hashes=n_hashes
        )
        x_BxLxD = x_BxLxD + nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        h = nn.LayerNorm(dtype=cfg.jnp_dtype, name="ff_norm")(x_BxLxD)
        h = FeedForward(cfg.d_ff, cfg.dropout, cfg.jnp_dtype, name="ff")(
            h, deterministic=deterministic
        )
        return x_BxLxD + nn.Dropout(cfg.dropout)(h, deterministic=deterministic)


def shift_right(tokens_BxL: jax.Array) -> jax.Array:
    """Inputs for next-token prediction: position t sees token t-1 (0 at t=0)."""
    return jnp.pad(tokens_BxL, ((0, 0), (1, 0)))[:, :-1]


class ReformerLM(nn.Module):
    """Token embedding, positions, `n_layers` blocks, final LayerNorm, output logits.

    `tokens_BxL` are the targets; the model shifts them right itself, so the logits at t
    predict token t from tokens before t.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxL: jax.Array,
        mask_BxL: jax.Array | None = None,
        *,
        deterministic: bool = True,
        n_hashes: int | None = None,
    ) -> jax.Array:
        cfg = self.cfg
        length = tokens_BxL.shape[1]
        if cfg.positional == "learned" and length > cfg.max_len:
            raise ValueError(f"sequence length {length} exceeds model.max_len={cfg.max_len}")
        embed = nn.Embed(
            cfg.vocab_size, cfg.d_model, name="embed", embedding_init=nn.initializers.normal(1.0)
        )
        x_BxLxD = embed(shift_right(tokens_BxL)).astype(cfg.jnp_dtype)
        if cfg.positional == "learned":
            pos_LxD = self.param(
                "pos_embed", nn.initializers.normal(1.0), (cfg.max_len, cfg.d_model)
            )[:length]
            x_BxLxD = x_BxLxD + pos_LxD.astype(cfg.jnp_dtype)
        x_BxLxD = nn.Dropout(cfg.dropout)(x_BxLxD, deterministic=deterministic)
        x_BxLxD = self.perturb("embedded", x_BxLxD)  # Lets tests take d(output)/d(input).
        for i in range(cfg.n_layers):
            x_BxLxD = Block(cfg, cfg.attention_type(i), name=f"layer_{i}")(
                x_BxLxD, mask_BxL, deterministic=deterministic, n_hashes=n_hashes
            )
        x_BxLxD = nn.LayerNorm(dtype=cfg.jnp_dtype, name="final_norm")(x_BxLxD)
        logits = nn.Dense(cfg.vocab_size, dtype=cfg.jnp_dtype, name="logits")(x_BxLxD)
        return logits.astype(jnp.float32)


def loss_and_metrics(
    logits_BxLxV: jax.Array, tokens_BxL: jax.Array, weights_BxL: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted mean cross-entropy (nats/token) and the sums the metrics are made from."""
    logp_BxL = jnp.take_along_axis(
        jax.nn.log_softmax(logits_BxLxV, axis=-1), tokens_BxL[..., None], axis=-1
    )[..., 0]
    correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == tokens_BxL).astype(jnp.float32)
    denom = jnp.maximum(weights_BxL.sum(), 1.0)
    loss = -(logp_BxL * weights_BxL).sum() / denom
    sums = {
        "loss_sum": -(logp_BxL * weights_BxL).sum(),
        "correct_sum": (correct_BxL * weights_BxL).sum(),
        "weight_sum": weights_BxL.sum(),
    }
    return loss, sums
