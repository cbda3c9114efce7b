"""What a decode starts from: the bucket counts its LSH layers hash into, the rotations
drawn once per decode, and every layer's empty cache (what each cache holds, and how new
positions attend over it, is in `reformer/attention/caches.py`)."""

from __future__ import annotations

import dataclasses

import jax

from reformer.attention import caches as caches_lib
from reformer.attention import lsh
from reformer.model.attention_types import make_attention
from reformer.model.model_config import ModelConfig


def lsh_n_buckets(cfg: ModelConfig) -> int:
    """Buckets per round of LSH self-attention when decoding: `model.n_buckets`, the count
    `with_training_length` resolved, else trax's automatic count at `model.max_len`."""
    return (
        cfg.lsh_n_buckets
        or cfg.decode_n_buckets
        or lsh.default_n_buckets(cfg.max_len, cfg.lsh_chunk_len)
    )


def cross_n_buckets(cfg: ModelConfig) -> int:
    """Buckets per round of LSH cross-attention when decoding: `model.n_buckets`, the count
    `with_training_length` resolved, else the automatic count of `2 * model.max_len` items."""
    return (
        cfg.lsh_n_buckets
        or cfg.cross_n_buckets
        or lsh.default_n_buckets(2 * cfg.max_len, cfg.lsh_chunk_len)
    )


def with_training_length(cfg: ModelConfig, seq_len: int, source_len: int = 0) -> ModelConfig:
    """`cfg` with the bucket counts decoding uses fixed to those training used with
    automatic `n_buckets` at sequences of `seq_len` tokens (and sources of `source_len`:
    LSH cross-attention hashes `seq_len + source_len` items), so decoding hashes into as many
    buckets as training. Training's own fields (and so an encoder's buckets) are unchanged."""
    if cfg.lsh_n_buckets:
        return cfg
    if "lsh" in cfg.attention_types:
        cfg = dataclasses.replace(
            cfg, decode_n_buckets=lsh.default_n_buckets(seq_len, cfg.lsh_chunk_len)
        )
    if cfg.kind == "encoder_decoder" and cfg.cross_attention == "lsh":
        total = lsh.default_n_buckets(seq_len + source_len, cfg.lsh_chunk_len)
        cfg = dataclasses.replace(cfg, cross_n_buckets=total)
    return cfg


def for_data(cfg: ModelConfig, data) -> ModelConfig:
    """The decoding config of a model trained on `data` (`config.data`): `cfg` with the
    bucket counts of its training lengths (`with_training_length`)."""
    return with_training_length(cfg, data.seq_len, data.source_len)


def lsh_rotations(cfg: ModelConfig, key: jax.Array, n_hashes: int, n_buckets: int):
    """Random rotations `[H, K, n_hashes, R]` of one LSH layer for one decode (R as in
    training, `lsh.rotation_width`)."""
    width = lsh.rotation_width(n_buckets, cfg.bucket_factors)
    return jax.random.normal(key, (cfg.n_heads, cfg.d_head, n_hashes, width))


def _self_cache(cfg: ModelConfig, i: int, batch: int, length: int, rotations) -> dict:
    """Layer `i`'s empty self-attention cache; a local layer's ring is sized by its own
    module's chunk settings."""
    kind = cfg.attention_type(i)
    chunks = {}
    if kind == "local":
        module = make_attention(cfg, kind, "attention")
        chunks = dict(local_chunk_len=module.chunk_len, n_chunks_before=module.n_chunks_before)
    return caches_lib.empty_self_cache(
        kind,
        batch,
        length,
        cfg.n_heads,
        cfg.d_head,
        cfg.jnp_dtype,
        rotations=rotations,
        **chunks,
    )


def init_caches(
    cfg: ModelConfig, batch: int, length: int, n_hashes: int, hash_key: jax.Array
) -> list[dict]:
    """Empty decoding caches of every layer for `length` positions. LSH layers draw their
    rotations once per decode: self-attention of layer i from `fold_in(hash_key, i)` with
    `lsh_n_buckets` buckets, the decoder's LSH cross-attention from
    `fold_in(hash_key, n_layers + i)` with `cross_n_buckets`."""
    caches = []
    for i in range(cfg.n_layers):
        rotations = None
        if cfg.attention_type(i) == "lsh":
            key = jax.random.fold_in(hash_key, i)
            rotations = lsh_rotations(cfg, key, n_hashes, lsh_n_buckets(cfg))
        cache = {"attention": _self_cache(cfg, i, batch, length, rotations)}
        if cfg.has_cross_attention:
            key = jax.random.fold_in(hash_key, cfg.n_layers + i)
            lsh_cross = cfg.cross_attention == "lsh"
            cache["cross_attention"] = {
                "rotations": lsh_rotations(cfg, key, n_hashes, cross_n_buckets(cfg))
                if lsh_cross
                else None
            }
        caches.append(cache)
    return caches
