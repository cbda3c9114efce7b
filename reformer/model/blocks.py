"""The blocks every model is built from: the self-attention, cross-attention and
feed-forward halves, the input embeddings, the layer stack of each residual kind, and the
output layer with its chunked loss. The config they read and the layer-naming rule are in
`reformer/model/model_config.py`; decoding runs these halves itself (`reformer/decoding/`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from reformer.attention import cross_attention
from reformer.attention.primitives import matmul, sequence_map
from reformer.model import reversible
from reformer.model.attention_types import make_attention
from reformer.model.layers import (
    AxialPositionalEmbedding,
    FeedForwardWeights,
    LayerNormWeights,
    dropout,
    feed_forward,
    layer_norm,
)
from reformer.model.model_config import (
    HALVES,
    ModelConfig,
    layer_names,
)


def _dropout_key(module: nn.Module, rate: float, deterministic: bool):
    """(rate, key) of a residual dropout (`layers.dropout`); (0, None) when it is off."""
    if deterministic or rate == 0.0:
        return 0.0, None
    return rate, module.make_rng("dropout")


def _norm_and_dropout(module: nn.Module, deterministic: bool):
    """A half's LayerNorm (its `norm` parameters, as a function) and the dropout of its
    output (`finish(chunk_index, y)`), whose result joins the float32 residual stream."""
    cfg = module.cfg
    norm = LayerNormWeights(name="norm")(cfg.d_model)
    rate, key = _dropout_key(module, cfg.dropout, deterministic)

    def finish(index, y):
        return dropout(y, rate, key, index).astype(jnp.float32)

    return (lambda x: layer_norm(norm, x, cfg.layer_norm_eps)), finish


class AttentionHalf(nn.Module):
    """F of a layer: LayerNorm -> attention -> dropout. Returns (out, buckets or None).

    The LayerNorm and the projections, and the output projection and the dropout, run on
    `model.position_chunk_size` positions at a time around the attention kernel, each chunk
    rematerialized in the backward pass (`layers.sequence_map`): the half keeps no
    whole-sequence LayerNorm output, dropout mask or projected output for its backward pass.
    """

    cfg: ModelConfig
    kind: str

    @nn.compact
    def __call__(
        self,
        x_BxLxD,
        mask_BxL,
        *,
        deterministic: bool,
        n_hashes: int | None = None,
        buckets=None,
        cache: dict | None = None,
        start=None,
    ):
        """With a decoding `cache`, positions `start + [0, L)` over it: `(out, cache)`."""
        normalize, finish = _norm_and_dropout(self, deterministic)
        return make_attention(self.cfg, self.kind, "attention")(
            x_BxLxD,
            mask_BxL,
            deterministic=deterministic,
            n_hashes=n_hashes,
            buckets=buckets,
            normalize=normalize,
            finish=finish,
            **({} if cache is None else {"cache": cache, "start": start}),
        )


class CrossAttentionHalf(nn.Module):
    """The decoder's middle half: LayerNorm -> cross-attention to the encoder output
    (`model.cross_attention`: full or LSH) -> dropout. Returns (out, buckets or None)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x_BxTxD,
        memory_BxSxM,
        memory_mask_BxS,
        *,
        deterministic: bool,
        n_hashes: int | None = None,
        buckets=None,
        cache: dict | None = None,
    ):
        """With a decoding `cache`: `(out, cache)`, the cache filled from `memory_BxSxM`
        first when it is given (`x_BxTxD` may then be None)."""
        cfg = self.cfg
        normalize, finish = _norm_and_dropout(self, deterministic)
        module = cross_attention.CrossAttention(
            n_heads=cfg.n_heads,
            d_head=cfg.d_head,
            kind=cfg.cross_attention,
            chunk_len=cfg.lsh_chunk_len,
            n_buckets=cfg.lsh_n_buckets or None,
            bucket_factors=cfg.bucket_factors or None,
            n_hashes=cfg.n_hashes,
            dropout_rate=cfg.attention_dropout,
            dtype=cfg.jnp_dtype,
            position_chunk=cfg.position_chunk_size,
            name="attention",
        )
        return module(
            x_BxTxD,
            memory_BxSxM,
            memory_mask_BxS,
            deterministic=deterministic,
            n_hashes=n_hashes,
            buckets=buckets,
            normalize=normalize,
            finish=finish,
            cache=cache,
        )


class FeedForwardHalf(nn.Module):
    """G of a layer: LayerNorm -> feed-forward -> dropout, all on `model.position_chunk_size`
    positions at a time (`layers.sequence_map`)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD, *, deterministic: bool):
        cfg = self.cfg
        normalize, finish = _norm_and_dropout(self, deterministic)
        ff = FeedForwardWeights(cfg.d_ff, name="ff")(cfg.d_model)

        def chunk(index, x):
            return finish(index, feed_forward(ff, normalize(x), cfg.jnp_dtype, cfg.ff_activation))

        return sequence_map(chunk, (x_BxLxD,), cfg.position_chunk_size)


def token_table(cfg: ModelConfig, name: str = "embed") -> nn.Embed:
    """The token embedding table `[vocab, d_model]`."""
    return nn.Embed(
        cfg.vocab_size, cfg.d_model, name=name, embedding_init=nn.initializers.normal(1.0)
    )


def embed(
    module: nn.Module,
    cfg: ModelConfig,
    inputs_BxL: jax.Array,
    deterministic: bool,
    table: nn.Module | None = None,
    start=None,
):
    """Token plus position embeddings of `inputs_BxL`, then dropout: the float32 residual
    stream `[B, L, d_model]`. Declares `embed` (unless a shared `table` is given) and
    `pos_embed` or `axial_pos` in `module` (call it from the module's compact method).
    `start` (decoding): the inputs are positions `start + [0, L)`."""
    length = inputs_BxL.shape[1]
    table = table if table is not None else token_table(cfg)
    # The residual streams are float32 in every `model.dtype`, and so is their
    # reconstruction in the reversible backward pass; only matrix products use `dtype`.
    x_BxLxD = table(inputs_BxL).astype(jnp.float32)
    if cfg.positional == "learned":
        if length > cfg.max_len:
            raise ValueError(f"sequence length {length} exceeds model.max_len={cfg.max_len}")
        table_PxD = module.param(
            "pos_embed", nn.initializers.normal(1.0), (cfg.max_len, cfg.d_model)
        )
        pos_LxD = (
            table_PxD[:length]
            if start is None
            else jax.lax.dynamic_slice_in_dim(table_PxD, start, length)
        )
        x_BxLxD = x_BxLxD + pos_LxD
    elif cfg.positional == "axial":
        pos_LxD = AxialPositionalEmbedding(
            tuple(cfg.axial_shape), tuple(cfg.axial_dims), name="axial_pos"
        )(length, start)
        x_BxLxD = x_BxLxD + pos_LxD
    rate, key = _dropout_key(module, cfg.dropout, deterministic)
    if key is not None:  # Chunked: the mask is drawn again in the backward pass.
        x_BxLxD = sequence_map(
            lambda i, x: dropout(x, rate, key, i), (x_BxLxD,), cfg.position_chunk_size
        )
    return x_BxLxD


class PositionsEmbedding(nn.Module):
    """Decoding's input: `embed` without dropout of the inputs of positions
    `start + [0, L)`, applied to the parameters of the model (or tower) that declared them
    (`embed` unless a shared `table` is given, `pos_embed` or `axial_pos`)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, inputs_BxL, start, table=None):
        return embed(self, self.cfg, inputs_BxL, True, table, start=start)


def _stack_rngs(module: nn.Module, deterministic: bool, uses_lsh: bool) -> dict:
    """The stack's base keys. Training must hash with fresh rotations: without a "hash" rng
    a model with LSH layers refuses to train; a deterministic call hashes with a fixed key,
    so evaluation without rngs is repeatable."""
    if module.has_rng("hash"):
        rngs = {"hash": module.make_rng("hash")}
    elif deterministic or not uses_lsh:
        rngs = {"hash": jax.random.key(0)}
    else:
        raise ValueError(
            "a model with LSH layers needs a 'hash' rng when deterministic=False "
            "(pass rngs={'hash': key, 'dropout': key} to apply)"
        )
    if not deterministic:
        rngs["dropout"] = module.make_rng("dropout")
    return rngs


class _LayerDefs(NamedTuple):
    """The halves of a layer as unbound modules, applied as pure functions."""

    attention: list  # one AttentionHalf per pattern position
    cross: CrossAttentionHalf
    feed_forward: FeedForwardHalf


def _layer_defs(cfg: ModelConfig) -> _LayerDefs:
    return _LayerDefs(
        [AttentionHalf(cfg, kind, parent=None) for kind in cfg.attention_types],
        CrossAttentionHalf(cfg, parent=None),
        FeedForwardHalf(cfg, parent=None),
    )


def _layers_init(cfg, defs: _LayerDefs, x_BxLxD, mask_BxL, memory, memory_mask_BxS):
    """`rng -> layers`: every pattern position's halves initialized, stacked over the
    repeats."""
    n_repeats = cfg.n_layers // len(cfg.attention_types)

    def init_layer(rng, j):
        r_attention, r_hash, r_ff = jax.random.split(rng, 3)
        params = {
            "attention": defs.attention[j].init(
                {"params": r_attention, "hash": r_hash}, x_BxLxD, mask_BxL, deterministic=True
            )["params"],
            "feed_forward": defs.feed_forward.init(r_ff, x_BxLxD, deterministic=True)["params"],
        }
        if memory is not None:
            params["cross_attention"] = defs.cross.init(
                {"params": jax.random.fold_in(rng, 3), "hash": r_hash},
                x_BxLxD,
                memory,
                memory_mask_BxS,
                deterministic=True,
            )["params"]
        return params

    def init_layers(rng):
        keys = jax.random.split(rng, (len(cfg.attention_types), n_repeats))
        return {
            name: jax.vmap(lambda k, j=j: init_layer(k, j))(keys[j])
            for j, name in enumerate(layer_names(cfg))
        }

    return init_layers


def _half_fns(defs: _LayerDefs, halves, deterministic: bool, n_hashes: int | None) -> list:
    """Per pattern position, its halves as `reversible.HalfFn`s (context: the self-attention
    mask and the memory's mask)."""

    def attention_fn(j):
        def f(p, x, r, buckets, context, memory):
            del memory
            return defs.attention[j].apply(
                {"params": p},
                x,
                context[0],
                deterministic=deterministic,
                n_hashes=n_hashes,
                buckets=buckets,
                rngs=r,
            )

        return f

    def cross_fn(p, x, r, buckets, context, memory):
        return defs.cross.apply(
            {"params": p},
            x,
            memory,
            context[1],
            deterministic=deterministic,
            n_hashes=n_hashes,
            buckets=buckets,
            rngs=r,
        )

    def feed_forward_fn(p, x, r, aux, context, memory):
        del aux, context, memory
        out = defs.feed_forward.apply({"params": p}, x, deterministic=deterministic, rngs=r)
        return out, None

    fns = {"cross_attention": cross_fn, "feed_forward": feed_forward_fn}
    return [
        tuple(attention_fn(j) if h == "attention" else fns[h] for h in halves)
        for j in range(len(defs.attention))
    ]


def layer_stack(
    module: nn.Module,
    cfg: ModelConfig,
    x_BxLxD: jax.Array,
    mask_BxL: jax.Array | None,
    deterministic: bool,
    n_hashes: int | None,
    memory: jax.Array | None = None,
    memory_mask_BxS: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
    """The layers over the embedded inputs; returns the residual streams (two, or one for
    `standard`). Declares `layers` in `module`: per pattern position
    `layers/<layer_name>/{attention,[cross_attention,]feed_forward}`, each with a leading
    axis over the `n_layers / len(pattern)` repeats; a decoder (given the encoder output
    `memory`) has the cross-attention half. The halves run as pure functions of explicit
    parameters (`reformer/model/reversible.py`)."""
    defs = _layer_defs(cfg)
    halves = ("attention", "feed_forward") if memory is None else HALVES
    init = _layers_init(cfg, defs, x_BxLxD, mask_BxL, memory, memory_mask_BxS)
    layers = module.param("layers", init)
    params = tuple(tuple(layers[n][h] for h in halves) for n in layer_names(cfg))
    uses_lsh = "lsh" in cfg.attention_types or (memory is not None and cfg.cross_attention == "lsh")
    rngs = _stack_rngs(module, deterministic, uses_lsh)
    half_fns = _half_fns(defs, halves, deterministic, n_hashes)
    context = (mask_BxL, memory_mask_BxS)
    if cfg.residual == "reversible":
        return reversible.reversible_stack(
            half_fns, params, x_BxLxD, x_BxLxD, rngs, context, memory, spacing=cfg.stream_spacing
        )
    x2 = None if cfg.residual == "standard" else x_BxLxD
    streams = reversible.plain_stack(
        half_fns, params, x_BxLxD, x2, rngs, context, memory, spacing=cfg.stream_spacing
    )
    return tuple(s for s in streams if s is not None)


def final_norm(module: nn.Module, cfg: ModelConfig):
    """The LayerNorm over the joined streams (`final_norm`, `n_streams * d_model` wide), as a
    function of the joined features."""
    norm = LayerNormWeights(name="final_norm")(cfg.n_streams * cfg.d_model)
    return lambda y: layer_norm(norm, y, cfg.layer_norm_eps)


class OutputLayer(nn.Module):
    """The output projection to the vocabulary (the parameters of `nn.Dense`), and the loss
    computed from it in chunks along the sequence for large vocabularies."""

    vocab_size: int
    dtype: jnp.dtype = jnp.float32

    def _params(self, d_in: int):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (d_in, self.vocab_size), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.vocab_size,), jnp.float32)
        return kernel, bias

    def _logits(self, y_BxLxD, kernel, bias):
        return matmul(y_BxLxD, kernel, self.dtype) + bias

    @nn.compact
    def __call__(self, y_BxLxD, tokens_BxL=None, weights_BxL=None, chunk_size=0, normalize=None):
        """Logits; or, given targets and weights, `(loss, sums)` in chunks of `chunk_size`.

        `y_BxLxD` may be a tuple of arrays, joined along the last axis (the two residual
        streams), and `normalize` (the final LayerNorm) applied to the joined features; with
        a loss both happen chunk by chunk (`layers.sequence_map`), rematerialized in the
        backward pass, so no whole-sequence joined, normalized or logit array exists.
        """
        parts = y_BxLxD if isinstance(y_BxLxD, tuple) else (y_BxLxD,)
        kernel, bias = self._params(sum(p.shape[-1] for p in parts))

        def features(*ps):
            y = jnp.concatenate(ps, axis=-1) if len(ps) > 1 else ps[0]
            return y if normalize is None else normalize(y)

        if weights_BxL is None:
            return self._logits(features(*parts), kernel, bias)

        def chunk_sums(_, *args):  # Padded positions have weight 0.
            *ps, t, w = args
            return loss_and_metrics(self._logits(features(*ps), kernel, bias), t, w)[1]

        sums = sequence_map(
            chunk_sums, (*parts, tokens_BxL, weights_BxL), chunk_size, out_axis=None
        )
        loss = sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0)
        return loss, sums


def stream_logits(cfg: ModelConfig, norm: dict, output: dict, streams) -> jax.Array:
    """Logits of the residual streams from explicit parameters: the final LayerNorm
    (`final_norm`'s `norm`) over the joined streams, then the output layer's (`output`)."""
    return OutputLayer(cfg.vocab_size, cfg.jnp_dtype, parent=None).apply(
        {"params": output}, streams, normalize=lambda y: layer_norm(norm, y, cfg.layer_norm_eps)
    )


def loss_and_metrics(
    logits_BxLxV: jax.Array, tokens_BxL: jax.Array, weights_BxL: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted mean cross-entropy (nats per target) and the sums the metrics are made from;
    `smooth_sum` is the summed mean of -log p over the vocabulary, the part of the loss that
    label smoothing mixes in (`steps.loss_sums_and_grads`). Any leading axes: `[B, L, V]`
    logits with `[B, L]` targets, or `[B, C]` with `[B]`."""
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    logp_BxL = jnp.take_along_axis(logp_BxLxV, tokens_BxL[..., None], axis=-1)[..., 0]
    correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == tokens_BxL).astype(jnp.float32)
    denom = jnp.maximum(weights_BxL.sum(), 1.0)
    loss = -(logp_BxL * weights_BxL).sum() / denom
    sums = {
        "loss_sum": -(logp_BxL * weights_BxL).sum(),
        "correct_sum": (correct_BxL * weights_BxL).sum(),
        "weight_sum": weights_BxL.sum(),
        "smooth_sum": -(logp_BxLxV.mean(axis=-1) * weights_BxL).sum(),
    }
    return loss, sums
