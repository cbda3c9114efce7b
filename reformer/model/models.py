"""The models, built from the blocks of `reformer/model/blocks.py`.

- `ReformerLM` (`model.kind = "lm"`): a causal language model; the inputs are shifted
  right inside, so the logits at t predict token t from the tokens before it.
- `ReformerEncoder` (`"masked_lm"`, `"classifier"`): a bidirectional encoder of the same
  blocks, with padding (id 0) masked in every attention type; its head predicts the original
  token at masked positions, or one label per sequence from the mean of its outputs over the
  real positions.
- `ReformerEncoderDecoder` (`"encoder_decoder"`): such an encoder over the source, and a
  decoder whose layers are causal self-attention, cross-attention to the encoder output
  (full or LSH) and feed-forward, predicting the target (shifted right inside, as the LM).

`model.residual` joins the blocks: `reversible` and `two_stream` (two streams, with and
without recomputation: the same function) or `standard` (one stream, pre-LayerNorm: the
Transformer the paper compares against). `batch_sums` gives the trainer one call for every
kind: a batch in, the loss and metric sums out. The LM and the encoder-decoder also have the
pieces decoding (`reformer/decoding/`) applies around its own forward-only layer loop:
`embed_positions`, `decoder_layers` and `stream_logits` (and the encoder-decoder's `encode`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from reformer.model.blocks import (
    OutputLayer,
    PositionsEmbedding,
    embed,
    final_norm,
    layer_stack,
    loss_and_metrics,
    stream_logits,
    token_table,
)
from reformer.model.model_config import ModelConfig
from reformer.tokens import PAD_ID


def shift_right(tokens_BxL: jax.Array) -> jax.Array:
    """Inputs for next-token prediction: position t sees token t-1 (0 at t=0)."""
    return jnp.pad(tokens_BxL, ((0, 0), (1, 0)))[:, :-1]


class ReformerLM(nn.Module):
    """Embeddings, `n_layers` blocks, the final LayerNorm over the streams, output logits.

    Layer i has the attention type `attention_types[i % len(attention_types)]`.
    `tokens_BxL` are the targets; the model shifts them right itself.
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
        weights_BxL: jax.Array | None = None,
    ):
        """Logits `[B, L, vocab]`; or, given `weights_BxL`, `(loss, sums)` of
        `loss_and_metrics` with the tokens as targets, computed `model.loss_chunk_size`
        positions at a time so that only one chunk's logits exist."""
        cfg = self.cfg
        x_BxLxD = embed(self, cfg, shift_right(tokens_BxL), deterministic)
        streams = layer_stack(self, cfg, x_BxLxD, mask_BxL, deterministic, n_hashes)
        normalize = final_norm(self, cfg)
        output = OutputLayer(cfg.vocab_size, cfg.jnp_dtype, name="logits")
        return output(streams, tokens_BxL, weights_BxL, cfg.loss_chunk_size, normalize=normalize)

    def embed_positions(self, inputs_BxM, start) -> jax.Array:
        """Decoding: the embedded inputs of positions `start + [0, M)`, each the token
        before its position (already shifted)."""
        return PositionsEmbedding(self.cfg, parent=None).apply(self.variables, inputs_BxM, start)

    def decoder_layers(self) -> dict:
        """Decoding: the stacked parameters of the layers it runs (`layers`)."""
        return self.variables["params"]["layers"]

    def stream_logits(self, streams) -> jax.Array:
        """Decoding: the logits of the layers' output streams."""
        params = self.variables["params"]
        return stream_logits(self.cfg, params["final_norm"], params["logits"], streams)


class ReformerEncoder(nn.Module):
    """A bidirectional encoder: embeddings (no shift), `n_layers` blocks attending over the
    whole sequence except padding (id 0), the final LayerNorm, and the head of `model.kind`:
    `masked_lm` logits `[B, L, vocab]` at every position, `classifier` logits
    `[B, n_classes]` of the mean of the normalized outputs over the real positions."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        inputs_BxL: jax.Array,
        *,
        deterministic: bool = True,
        n_hashes: int | None = None,
        targets: jax.Array | None = None,
        weights: jax.Array | None = None,
    ):
        """Logits; or, given `targets` (tokens `[B, L]` or labels `[B]`) and their
        `weights`, `(loss, sums)` of `loss_and_metrics`."""
        cfg = self.cfg
        mask_BxL = inputs_BxL != PAD_ID
        x_BxLxD = embed(self, cfg, inputs_BxL, deterministic)
        streams = layer_stack(self, cfg, x_BxLxD, mask_BxL, deterministic, n_hashes)
        normalize = final_norm(self, cfg)
        if cfg.kind == "masked_lm":
            output = OutputLayer(cfg.vocab_size, cfg.jnp_dtype, name="logits")
            return output(streams, targets, weights, cfg.loss_chunk_size, normalize=normalize)
        features_BxLxD = normalize(jnp.concatenate(streams, axis=-1))
        real_BxL = mask_BxL.astype(jnp.float32)
        pooled_BxD = jnp.einsum("bld,bl->bd", features_BxLxD, real_BxL) / jnp.maximum(
            real_BxL.sum(-1, keepdims=True), 1.0
        )
        logits_BxC = OutputLayer(cfg.n_classes, cfg.jnp_dtype, name="classes")(pooled_BxD)
        if weights is None:
            return logits_BxC
        return loss_and_metrics(logits_BxC, targets, weights)


class Tower(nn.Module):
    """One side of an encoder-decoder: positions over the embedded tokens, the layers (with
    cross-attention to `memory` in the decoder) and the final LayerNorm. Returns the
    streams and the final LayerNorm as a function of the joined streams."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxL,
        table,
        mask_BxL,
        *,
        deterministic: bool,
        n_hashes: int | None,
        memory=None,
        memory_mask_BxS=None,
    ):
        x_BxLxD = embed(self, self.cfg, tokens_BxL, deterministic, table)
        streams = layer_stack(
            self, self.cfg, x_BxLxD, mask_BxL, deterministic, n_hashes, memory, memory_mask_BxS
        )
        return streams, final_norm(self, self.cfg)


class ReformerEncoderDecoder(nn.Module):
    """A bidirectional encoder over the source (`inputs`, padding 0 masked) and a causal
    decoder over the target that attends to the encoder output: `LayerNorm(concat(encoder
    streams))`, computed once per source (`encode`) and read by every decoder layer.
    Source and target share one vocabulary and, with `model.share_embeddings`, one token
    table (`embed`; else `encoder/embed` and `decoder/embed`)."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = token_table(cfg) if cfg.share_embeddings else None
        self.encoder = Tower(cfg.encoder())
        self.decoder = Tower(cfg.decoder())
        self.logits = OutputLayer(cfg.vocab_size, cfg.jnp_dtype)

    def encode(self, inputs_BxS, *, deterministic: bool = True, n_hashes: int | None = None):
        """`(memory [B, S, n_streams * d_model], its mask [B, S])` of the source."""
        mask_BxS = inputs_BxS != PAD_ID
        streams, normalize = self.encoder(
            inputs_BxS, self.embed, mask_BxS, deterministic=deterministic, n_hashes=n_hashes
        )
        return normalize(jnp.concatenate(streams, axis=-1)), mask_BxS

    def decode(
        self,
        tokens_BxT,
        memory,
        memory_mask_BxS,
        *,
        deterministic: bool = True,
        n_hashes: int | None = None,
        weights=None,
    ):
        """Logits `[B, T, vocab]` of the target `tokens_BxT` (shifted right inside) given the
        encoder output; or, with `weights`, `(loss, sums)` as the LM's."""
        streams, normalize = self.decoder(
            shift_right(tokens_BxT),
            self.embed,
            None,
            deterministic=deterministic,
            n_hashes=n_hashes,
            memory=memory,
            memory_mask_BxS=memory_mask_BxS,
        )
        return self.logits(
            streams, tokens_BxT, weights, self.cfg.loss_chunk_size, normalize=normalize
        )

    def embed_positions(self, inputs_BxM, start) -> jax.Array:
        """Decoding: the decoder's embedded inputs of target positions `start + [0, M)`
        (the tokens before them, 0 first)."""
        params = self.variables["params"]
        return PositionsEmbedding(self.cfg.decoder(), parent=None).apply(
            {"params": params["decoder"]}, inputs_BxM, start, self.embed
        )

    def decoder_layers(self) -> dict:
        """Decoding: the stacked parameters of the layers it runs (`decoder/layers`)."""
        return self.variables["params"]["decoder"]["layers"]

    def stream_logits(self, streams) -> jax.Array:
        """Decoding: the logits of the decoder's output streams."""
        params = self.variables["params"]
        return stream_logits(self.cfg, params["decoder"]["final_norm"], params["logits"], streams)

    def __call__(
        self,
        inputs_BxS,
        tokens_BxT,
        *,
        deterministic: bool = True,
        n_hashes: int | None = None,
        weights=None,
    ):
        memory, mask_BxS = self.encode(inputs_BxS, deterministic=deterministic, n_hashes=n_hashes)
        return self.decode(
            tokens_BxT,
            memory,
            mask_BxS,
            deterministic=deterministic,
            n_hashes=n_hashes,
            weights=weights,
        )


def make_model(cfg: ModelConfig) -> nn.Module:
    """The model of `cfg.kind`."""
    if cfg.kind == "lm":
        return ReformerLM(cfg)
    if cfg.kind in ("masked_lm", "classifier"):
        return ReformerEncoder(cfg)
    if cfg.kind == "encoder_decoder":
        return ReformerEncoderDecoder(cfg)
    raise ValueError(f"unknown model kind {cfg.kind!r}")


def example_batch(
    cfg: ModelConfig, batch_size: int, seq_len: int, source_len: int = 0
) -> dict[str, jax.Array]:
    """A batch of zeros with the fields and shapes `batch_sums` reads for `cfg.kind` (an
    encoder-decoder's sources of `source_len` tokens, 0 = `seq_len`)."""
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    weights = jnp.zeros((batch_size, seq_len), jnp.float32)
    if cfg.kind == "lm":
        return {"tokens": tokens, "weights": weights}
    if cfg.kind == "masked_lm":
        return {"inputs": tokens, "tokens": tokens, "weights": weights}
    if cfg.kind == "encoder_decoder":
        source = jnp.zeros((batch_size, source_len or seq_len), jnp.int32)
        return {"inputs": source, "tokens": tokens, "weights": weights}
    return {
        "tokens": tokens,
        "labels": jnp.zeros((batch_size,), jnp.int32),
        "weights": jnp.zeros((batch_size,), jnp.float32),
    }


def _inputs(kind: str, batch: dict) -> tuple[tuple, dict]:
    """The model call's positional and keyword arguments for a batch of `kind`."""
    if kind == "lm":
        return (batch["tokens"],), {"weights_BxL": batch["weights"]}
    if kind == "masked_lm":
        return (batch["inputs"],), {"targets": batch["tokens"], "weights": batch["weights"]}
    if kind == "encoder_decoder":
        return (batch["inputs"], batch["tokens"]), {"weights": batch["weights"]}
    return (batch["tokens"],), {"targets": batch["labels"], "weights": batch["weights"]}


def batch_sums(
    model: nn.Module,
    params,
    batch: dict,
    *,
    deterministic: bool = True,
    n_hashes: int | None = None,
    rngs: dict | None = None,
) -> dict[str, jax.Array]:
    """The metric sums (`loss_sum`, `correct_sum`, `weight_sum`) of `batch` under any model
    kind: the LM's `tokens` and `weights`; the masked LM's `inputs`, target `tokens` and
    `weights`; the classifier's `tokens`, `labels` and per-sequence `weights`."""
    args, kwargs = _inputs(model.cfg.kind, batch)
    return model.apply(
        {"params": params},
        *args,
        deterministic=deterministic,
        n_hashes=n_hashes,
        rngs=rngs or {},
        **kwargs,
    )[1]


def init_params(model: nn.Module, rng: jax.Array, batch_size: int, seq_len: int):
    """Fresh parameters of `model` for batches of `seq_len` tokens."""
    args, kwargs = _inputs(model.cfg.kind, example_batch(model.cfg, batch_size, seq_len))
    return model.init({"params": rng, "hash": rng}, *args, **kwargs)["params"]
