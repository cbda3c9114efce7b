"""One decoding pass through a model: the inputs of positions `start + [0, M)` embedded by
the model (`embed_positions`), its layers run forward only through their caches, and the
logits of the output streams (`stream_logits`); and the caches a decode starts from, an
encoder-decoder's holding its encoded source.

The layers are the model's own halves (`AttentionHalf`, `CrossAttentionHalf`,
`FeedForwardHalf`) applied to their parameters (`decoder_layers`): each attention module
projects with its own kernels and fills and reads its own cache
(`reformer/attention/caches.py`), so no parameter is read outside the module that owns it.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from reformer.decoding.cache import init_caches
from reformer.model import reversible
from reformer.model.blocks import AttentionHalf, CrossAttentionHalf, FeedForwardHalf
from reformer.model.model_config import ModelConfig, layer_params
from reformer.model.models import ReformerEncoderDecoder, ReformerLM


def decoding_model(cfg: ModelConfig):
    """The model decoding applies: the encoder-decoder, or the LM."""
    return ReformerEncoderDecoder(cfg) if cfg.kind == "encoder_decoder" else ReformerLM(cfg)


def cache_source(cfg: ModelConfig, layers: dict, memory, memory_mask_BxS, caches: list[dict]):
    """The caches with every cross-attention layer's keys and values (and LSH buckets) of
    the encoded source `memory`: computed once per source."""
    cross = CrossAttentionHalf(cfg, parent=None)
    caches = [dict(c) for c in caches]
    for i, cache in enumerate(caches):
        p = layer_params(layers, cfg, i)["cross_attention"]
        cache["cross_attention"] = cross.apply(
            {"params": p},
            None,
            memory,
            memory_mask_BxS,
            deterministic=True,
            cache=cache["cross_attention"],
        )[1]
    return caches


def decode_layers(cfg: ModelConfig, layers: dict, x_BxMxD, start, caches: list[dict]):
    """The layers (stacked `layers`) on positions `start + [0, M)` through their decoding
    caches, forward only whatever the residual kind (nothing is reconstructed); returns
    `(streams, caches with these positions written)`."""
    caches = [dict(c) for c in caches]
    grid = functools.partial(reversible.on_grid, spacing=cfg.stream_spacing)
    a = grid(x_BxMxD)
    b = None if cfg.n_streams == 1 else a
    cross = CrossAttentionHalf(cfg, parent=None)
    feed_forward = FeedForwardHalf(cfg, parent=None)
    for i, cache in enumerate(caches):
        p = layer_params(layers, cfg, i)
        out, cache["attention"] = AttentionHalf(cfg, cfg.attention_type(i), parent=None).apply(
            {"params": p["attention"]},
            reversible.half_input(a, b),
            None,
            deterministic=True,
            cache=cache["attention"],
            start=start,
        )
        a, b = reversible.add_half(a, b, grid(out))
        if "cross_attention" in p:
            out, cache["cross_attention"] = cross.apply(
                {"params": p["cross_attention"]},
                reversible.half_input(a, b),
                None,
                None,
                deterministic=True,
                cache=cache["cross_attention"],
            )
            a, b = reversible.add_half(a, b, grid(out))
        out = feed_forward.apply(
            {"params": p["feed_forward"]}, reversible.half_input(a, b), deterministic=True
        )
        a, b = reversible.add_half(a, b, grid(out))
    return tuple(s for s in (a, b) if s is not None), caches


def forward(cfg: ModelConfig, params, inputs_BxM, start, caches):
    """Logits `[B, M, V]` of positions `start + [0, M)` that read `inputs_BxM` (already
    shifted: the token before each position), and the caches with these positions added.
    `M > 1` is a prefill and must start at 0; `M == 1` is one step at any `start`."""
    start = jnp.asarray(start, jnp.int32)
    model, variables = decoding_model(cfg), {"params": params}
    x_BxMxD = model.apply(variables, inputs_BxM, start, method="embed_positions")
    layers = model.apply(variables, method="decoder_layers")
    streams, caches = decode_layers(cfg, layers, x_BxMxD, start, caches)
    return model.apply(variables, streams, method="stream_logits"), caches


def start_caches(cfg: ModelConfig, params, batch, total, n_hashes, hash_key, source_BxS=None):
    """The caches a decode starts from: empty for `total` positions and, for an
    encoder-decoder, holding its source (`[B, S]`, encoded once, with `hash_key` for the
    encoder's LSH layers) in every cross-attention layer."""
    caches = init_caches(cfg, batch, total, n_hashes, hash_key)
    if cfg.kind != "encoder_decoder":
        return caches
    model, variables = ReformerEncoderDecoder(cfg), {"params": params}
    memory, mask = model.apply(
        variables, source_BxS, n_hashes=n_hashes, method="encode", rngs={"hash": hash_key}
    )
    repeat = batch // source_BxS.shape[0]  # beams share their row's source
    memory, mask = (jnp.repeat(a, repeat, axis=0) for a in (memory, mask))
    layers = model.apply(variables, method="decoder_layers")
    return cache_source(cfg, layers, memory, mask, caches)
