"""One layer's attention as the model's own forward pass computes it.

The model runs its layers inside a `lax.scan` (`reformer/model/reversible.py`), where nothing
can be read out. Here the same halves (`AttentionHalf`, `FeedForwardHalf` of
`reformer/model/blocks.py`) run one layer at a time on the same parameters, with the keys
the stack derives for each layer (`reversible.layer_rngs` of the stack's base "hash" key),
so every LSH layer draws the rotations of the model's forward pass and hashes into the same
buckets (`tests/test_inspect.py` checks both). At the inspected layer the attention module
sows its heads' projections and kernel outputs (`self_attention._expose`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from reformer.attention.self_attention import INTERMEDIATES
from reformer.model import reversible
from reformer.model.attention_types import make_attention
from reformer.model.blocks import AttentionHalf, FeedForwardHalf, PositionsEmbedding
from reformer.model.model_config import ModelConfig, layer_params
from reformer.model.models import make_model, shift_right
from reformer.tokens import PAD_ID

# The attention types whose pattern inspection can expand (`reformer/inspection/patterns.py`).
INSPECTABLE = ("full", "full_shared_qk", "local", "lsh")


@dataclasses.dataclass(frozen=True)
class Capture:
    """What one layer's attention computed for a batch.

    `projections`: the heads' projections `[B, H, L, K]` by kernel name (`query_key` and
    `value` for shared QK, else `query`, `key`, `value`); `heads_out`: the attention kernel's
    output per head `[B, H, L, K]`, before the output projection; `buckets`: each head's
    bucket of each position per round `[B, H, N, L]` (LSH layers; else None); `mask`:
    `[B, L]`, True = a real token (None: no padding); `module`: the layer's attention module
    (unbound), whose settings (chunks, causality, ...) the pattern is read with."""

    kind: str
    projections: dict
    heads_out: jax.Array
    buckets: jax.Array | None
    mask: jax.Array | None
    module: nn.Module


def model_inputs(cfg: ModelConfig, tokens_BxL: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """`(inputs, mask)` the model's layers read from `tokens_BxL`: the LM shifts the tokens
    right and masks nothing; encoders read them as they are and mask padding (id 0)."""
    if cfg.kind == "lm":
        return shift_right(tokens_BxL), None
    if cfg.kind in ("masked_lm", "classifier"):
        return tokens_BxL, tokens_BxL != PAD_ID
    raise ValueError(
        f"model.kind {cfg.kind!r}: inspection reads language models and encoders "
        "('lm', 'masked_lm', 'classifier')"
    )


def _first_hash_key(module: nn.Module) -> jax.Array:
    return module.make_rng("hash")


def stack_hash_key(cfg: ModelConfig, params, hash_key: jax.Array) -> jax.Array:
    """The layer stack's base "hash" key when the model is applied with
    `rngs={"hash": hash_key}` (as evaluation applies it): the first key the model's own
    scope draws from that stream, which is the one its stack takes (`blocks._stack_rngs`)."""
    return make_model(cfg).apply(
        {"params": params}, method=_first_hash_key, rngs={"hash": hash_key}
    )


def _layer_keys(base_key: jax.Array, layer: int) -> list[dict]:
    """Each half's keys of `layer` in a deterministic pass: the stack's (`layer_rngs`)."""
    return reversible.layer_rngs({"hash": base_key}, jnp.int32(layer), 2)


def run_layers(
    cfg: ModelConfig,
    params,
    inputs_BxL: jax.Array,
    mask_BxL: jax.Array | None,
    base_key: jax.Array,
    n_hashes: int | None,
    stop: int,
):
    """The residual streams entering layer `stop` (after layers `0 .. stop - 1`), computed
    as the model's forward pass computes them (deterministic): `(a, b)`, b None for one
    stream. `base_key` is the stack's base hash key (`stack_hash_key`)."""
    if cfg.has_cross_attention:
        raise ValueError("inspection reads models without cross-attention")
    x_BxLxD = PositionsEmbedding(cfg, parent=None).apply({"params": params}, inputs_BxL, None)
    grid = functools.partial(reversible.on_grid, spacing=cfg.stream_spacing)
    a = grid(x_BxLxD)
    b = None if cfg.n_streams == 1 else a
    feed_forward = FeedForwardHalf(cfg, parent=None)
    for i in range(stop):
        p, keys = layer_params(params["layers"], cfg, i), _layer_keys(base_key, i)
        out, _ = AttentionHalf(cfg, cfg.attention_type(i), parent=None).apply(
            {"params": p["attention"]},
            reversible.half_input(a, b),
            mask_BxL,
            deterministic=True,
            n_hashes=n_hashes,
            rngs=keys[0],
        )
        a, b = reversible.add_half(a, b, grid(out))
        out = feed_forward.apply(
            {"params": p["feed_forward"]},
            reversible.half_input(a, b),
            deterministic=True,
            rngs=keys[1],
        )
        a, b = reversible.add_half(a, b, grid(out))
    return a, b


def _unchunked(cfg: ModelConfig) -> ModelConfig:
    """The same layers without position chunks or head groups, whose calls sow nothing
    (the same function, computed whole)."""
    return dataclasses.replace(cfg, position_chunk_size=0, lsh_heads_per_step=0)


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "n_hashes"))
def _captured(cfg: ModelConfig, params, tokens_BxL, layer: int, hash_key, n_hashes):
    """`(projections, heads_out, buckets or None)` of layer `layer` (`capture_layer`)."""
    kind = cfg.attention_type(layer)
    inputs_BxL, mask_BxL = model_inputs(cfg, tokens_BxL)
    base_key = stack_hash_key(cfg, params, hash_key)
    a, b = run_layers(cfg, params, inputs_BxL, mask_BxL, base_key, n_hashes, layer)
    x_BxLxD = reversible.half_input(a, b)
    p, keys = layer_params(params["layers"], cfg, layer)["attention"], _layer_keys(base_key, layer)
    settings = dict(deterministic=True, n_hashes=n_hashes, rngs=keys[0])
    buckets = None
    if _unchunked(cfg) != cfg and kind == "lsh":  # The buckets of the model's own path.
        _, buckets = AttentionHalf(cfg, kind, parent=None).apply(
            {"params": p}, x_BxLxD, mask_BxL, **settings
        )
    (_, aux), state = AttentionHalf(_unchunked(cfg), kind, parent=None).apply(
        {"params": p}, x_BxLxD, mask_BxL, buckets=buckets, mutable=[INTERMEDIATES], **settings
    )
    sown = state[INTERMEDIATES]["attention"]
    return sown["projections"][0], sown["heads_out"][0], aux


def capture_layer(
    cfg: ModelConfig,
    params,
    tokens_BxL: jax.Array,
    layer: int,
    hash_key: jax.Array,
    n_hashes: int | None = None,
) -> Capture:
    """Layer `layer`'s attention on `tokens_BxL` as the model's forward pass computes it
    when applied with `rngs={"hash": hash_key}` and `n_hashes` (None: the model's own)."""
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer}: the model has layers 0..{cfg.n_layers - 1}")
    kind = cfg.attention_type(layer)
    if kind not in INSPECTABLE:
        raise ValueError(f"layer {layer} is {kind!r}; inspection reads {', '.join(INSPECTABLE)}")
    tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
    projections, heads_out, buckets = _captured(cfg, params, tokens_BxL, layer, hash_key, n_hashes)
    return Capture(
        kind=kind,
        projections=projections,
        heads_out=heads_out,
        buckets=buckets,
        mask=model_inputs(cfg, tokens_BxL)[1],
        module=make_attention(cfg, kind, "attention"),
    )
