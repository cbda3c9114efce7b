"""Decoding caches of the attention modules: what later positions read from earlier ones, in
buffers of a fixed size, and the attention of new positions over them.

The modules of `self_attention.py` declare their own projections and call these pure
functions with them when they are given a cache (`cache=`), so decoding reads no parameter
outside the module that owns it. Per layer kind:

- `full`: keys and values of every position so far (`[B, H, T, K]`);
- `full_shared_qk` and `lsh`: unit-length shared keys and values, and for `lsh` the buckets
  of every position in every hash round (`[B, H, N, T]`, hashed once, when the position is
  written) and the decode's rotations;
- `local`: a ring of the last `(n_chunks_before + 1) * chunk_len` keys and values with their
  positions, so a step costs the same at any context length;
- cross-attention: the encoder output's keys and values (and for LSH its buckets), computed
  once per source.

Full and local attention compute exactly what the training forward pass computes for a
position. LSH attention follows the one-query semantics of docs/architecture.md
("Decoding"): a query attends to every earlier key (every source key, for cross-attention)
that shares its bucket in at least one hash round, each key once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reformer.attention import lsh

QUERY_BLOCK = 256  # queries attended at once over a whole cache (a long prompt's prefill)


def local_window(chunk_len: int, n_chunks_before: int) -> int:
    """Positions a local layer's ring holds: the query's chunk and the `n_chunks_before`
    chunks before it (the module's own settings)."""
    return (n_chunks_before + 1) * chunk_len


def empty_self_cache(
    kind: str,
    batch: int,
    length: int,
    n_heads: int,
    d_head: int,
    dtype,
    *,
    local_chunk_len: int = 0,
    n_chunks_before: int = 0,
    rotations: jax.Array | None = None,
) -> dict:
    """An empty cache of a self-attention layer for `length` positions; a local layer's
    ring is sized by its module's `local_chunk_len` and `n_chunks_before`; an LSH layer's
    holds the decode's `rotations` `[H, K, N, R]`."""
    size = local_window(local_chunk_len, n_chunks_before) if kind == "local" else length
    kv = jnp.zeros((batch, n_heads, size, d_head), dtype)
    cache = {"k": kv, "v": kv}
    if kind == "lsh":
        cache["rotations"] = rotations
        n_hashes = rotations.shape[2]
        cache["buckets"] = jnp.zeros((batch, n_heads, n_hashes, size), jnp.int32)
    if kind == "local":
        cache["pos"] = jnp.full((size,), -1, jnp.int32)  # -1 = empty slot
    return cache


def hash_keys(
    qk_BxHxMxK: jax.Array, rotations_HxKxNxR: jax.Array, factors: tuple[int, ...] = ()
) -> jax.Array:
    """Buckets `[B, H, N, M]`: `argmax(concat([x R, -x R]))` per round (per factor), as in
    training."""
    rotated = jnp.einsum(
        "bhmk,hknr->bhnmr", qk_BxHxMxK.astype(jnp.float32), rotations_HxKxNxR.astype(jnp.float32)
    )
    return lsh.buckets_from_rotated(rotated, factors)


def attend(q_BxHxQxK, k_BxHxTxK, v_BxHxTxK, bias_BxHxQxT):
    """Softmax attention of Q queries over T keys with an additive float32 bias."""
    logits = jnp.einsum("bhqk,bhtk->bhqt", q_BxHxQxK, k_BxHxTxK, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits + bias_BxHxQxT, axis=-1)
    out = jnp.einsum(
        "bhqt,bhtk->bhqk",
        probs.astype(v_BxHxTxK.dtype),
        v_BxHxTxK,
        preferred_element_type=jnp.float32,
    )
    return out.astype(v_BxHxTxK.dtype)


def causal_bias(q_pos_Q, k_pos_T, exclude_self: bool):
    """The training masks of a causal layer: later keys at -1e9, itself at -1e5."""
    q_pos, k_pos = q_pos_Q[:, None], k_pos_T[None, :]
    bias = jnp.where(k_pos > q_pos, lsh.MASK_VALUE, 0.0)
    if exclude_self:
        bias = bias + jnp.where(k_pos == q_pos, lsh.SELF_MASK_VALUE, 0.0)
    return bias


def shared_bucket_bias(q_buckets_BxHxNxQ, k_buckets_BxHxNxT):
    """-1e9 where query and key share no bucket in any round."""
    shared = q_buckets_BxHxNxQ[:, :, 0, :, None] == k_buckets_BxHxNxT[:, :, 0, None, :]
    for r in range(1, q_buckets_BxHxNxQ.shape[2]):
        shared |= q_buckets_BxHxNxQ[:, :, r, :, None] == k_buckets_BxHxNxT[:, :, r, None, :]
    return jnp.where(shared, 0.0, lsh.MASK_VALUE)


def in_query_blocks(fn, q_BxHxMxK, *per_query):
    """`fn(q_block, *blocks)` over blocks of `QUERY_BLOCK` queries (axis 2 of `q`; each of
    `per_query` as `(array, query axis)`), joined: a long prompt never builds `[M, T]`
    logits at once."""
    m = q_BxHxMxK.shape[2]
    if m <= QUERY_BLOCK:
        return fn(q_BxHxMxK, *(a for a, _ in per_query))
    n_blocks = -(-m // QUERY_BLOCK)
    pad = n_blocks * QUERY_BLOCK - m

    def split(x, axis):  # [..., M, ...] -> [n_blocks, ..., block, ...]
        x = jnp.pad(x, [(0, 0)] * axis + [(0, pad)] + [(0, 0)] * (x.ndim - axis - 1))
        x = x.reshape(x.shape[:axis] + (n_blocks, QUERY_BLOCK) + x.shape[axis + 1 :])
        return jnp.moveaxis(x, axis, 0)

    blocks = (split(q_BxHxMxK, 2), *(split(a, axis) for a, axis in per_query))
    out = jax.lax.map(lambda b: fn(*b), blocks)  # [n_blocks, B, H, block, K]
    out = jnp.moveaxis(out, 0, 2).reshape(out.shape[1], out.shape[2], -1, out.shape[-1])
    return out[:, :, :m]


def write(cache_array, new, start, axis):
    return jax.lax.dynamic_update_slice_in_dim(
        cache_array, new.astype(cache_array.dtype), start, axis
    )


def _local_step(chunk_len, n_chunks_before, q_BxHx1xK, k_BxHx1xK, v_BxHx1xK, pos, cache):
    """One position of a local layer: write it into the ring, attend over the window (its
    chunk and the `n_chunks_before` before it)."""
    window = cache["k"].shape[2]
    slot = pos % window
    cache = {
        "k": write(cache["k"], k_BxHx1xK, slot, 2),
        "v": write(cache["v"], v_BxHx1xK, slot, 2),
        "pos": cache["pos"].at[slot].set(pos),
    }
    first = (pos // chunk_len - n_chunks_before) * chunk_len
    k_pos = cache["pos"]
    outside = (k_pos < 0) | (k_pos < first)
    bias = causal_bias(pos[None], k_pos, False) + jnp.where(outside, lsh.MASK_VALUE, 0.0)
    return attend(q_BxHx1xK, cache["k"], cache["v"], bias[None, None]), cache


def _local_prefill(chunk_len, n_chunks_before, q_BxHxMxK, k_BxHxMxK, v_BxHxMxK, cache):
    """Positions `[0, M)` of a local layer with the training kernel (which scales q
    itself); then the ring holds the last positions."""

    def one_head(q, k, v):
        return lsh.local_attention(
            q, k, v, chunk_len=chunk_len, n_chunks_before=n_chunks_before, causal=True
        )

    out = jax.vmap(jax.vmap(one_head))(q_BxHxMxK, k_BxHxMxK, v_BxHxMxK)
    m, window = q_BxHxMxK.shape[2], cache["k"].shape[2]
    keep = jnp.arange(max(0, m - window), m)
    slots = keep % window
    cache = {
        "k": cache["k"].at[:, :, slots].set(k_BxHxMxK[:, :, keep].astype(cache["k"].dtype)),
        "v": cache["v"].at[:, :, slots].set(v_BxHxMxK[:, :, keep].astype(cache["v"].dtype)),
        "pos": cache["pos"].at[slots].set(keep),
    }
    return out, cache


def self_attention_step(
    kind: str,
    projections: dict,
    cache: dict,
    start: jax.Array,
    *,
    d_head: int,
    local_chunk_len: int = 0,
    n_chunks_before: int = 0,
    bucket_factors: tuple[int, ...] = (),
):
    """Causal self-attention of positions `start + [0, M)` over the cache: `(out [B, H, M,
    K], the cache with these positions written)`. `projections` are the positions' heads
    (`[B, H, M, K]` each: "query", "key", "value" or "query_key", "value"). `M > 1` is a
    prefill from position 0; `M == 1` one step at any `start`. A local layer passes its
    module's `local_chunk_len` and `n_chunks_before`."""
    m, v = projections["value"].shape[2], projections["value"]
    if kind == "local":
        q, k = projections["query"], projections["key"]
        if m > 1:
            return _local_prefill(local_chunk_len, n_chunks_before, q, k, v, cache)
        q = q * jnp.asarray(d_head**-0.5, q.dtype)
        return _local_step(local_chunk_len, n_chunks_before, q, k, v, start, cache)
    if kind == "full":
        q = projections["query"] * jnp.asarray(d_head**-0.5, v.dtype)
        cache = {
            "k": write(cache["k"], projections["key"], start, 2),
            "v": write(cache["v"], v, start, 2),
        }
        q_buckets = None
    else:  # full_shared_qk, lsh: unit-length shared keys, itself at -1e5
        q = projections["query_key"]
        cache = {
            **cache,
            "k": write(cache["k"], lsh.unit_keys(q), start, 2),
            "v": write(cache["v"], v, start, 2),
        }
        q_buckets = None
        if kind == "lsh":
            q_buckets = hash_keys(q, cache["rotations"], bucket_factors)
            cache["buckets"] = write(cache["buckets"], q_buckets, start, 3)
    k_pos_T = jnp.arange(cache["k"].shape[2])
    exclude_self = kind != "full"

    def block(q_block, q_pos, *q_buckets_block):
        bias = causal_bias(q_pos, k_pos_T, exclude_self)[None, None]
        if q_buckets_block:
            bias = bias + shared_bucket_bias(q_buckets_block[0], cache["buckets"])
        return attend(q_block, cache["k"], cache["v"], bias)

    per_query = [(start + jnp.arange(m), 0)]
    if q_buckets is not None:
        per_query.append((q_buckets, 3))
    return in_query_blocks(block, q, *per_query), cache


def cross_attention_cache(
    kind: str,
    k_BxHxSxK: jax.Array,
    v_BxHxSxK: jax.Array,
    mask_BxS: jax.Array | None,
    *,
    rotations: jax.Array | None = None,
    bucket_factors: tuple[int, ...] = (),
) -> dict:
    """The cache of a cross-attention layer: the source's keys (unit length for LSH) and
    values, padding zeroed (a query with no real key gets a zero output), its mask and, for
    LSH, the keys' order by bucket per round under the decode's `rotations`
    (`lsh.sort_keys`)."""
    if mask_BxS is None:
        mask_BxS = jnp.ones(k_BxHxSxK.shape[:1] + k_BxHxSxK.shape[2:3], bool)
    cache = {
        "k": lsh.unit_keys(k_BxHxSxK) if kind == "lsh" else k_BxHxSxK,
        "v": jnp.where(mask_BxS[:, None, :, None], v_BxHxSxK, 0).astype(v_BxHxSxK.dtype),
        "mask": mask_BxS,
    }
    if kind == "lsh":
        n_buckets = lsh.n_buckets_bound(rotations[0], bucket_factors)

        def one_head(k_SxK, mask_S, rotations_KxNxR):
            buckets_NxS = lsh.hash_vectors(k_SxK, rotations_KxNxR, bucket_factors or None)
            return lsh.sort_keys(buckets_NxS, mask_S, n_buckets)

        per_head = jax.vmap(one_head, in_axes=(0, None, 0))
        cache["rotations"] = rotations
        cache["order"], cache["sorted"] = jax.vmap(per_head, in_axes=(0, 0, None))(
            k_BxHxSxK, mask_BxS, rotations
        )
    return cache


def cross_attention_step(
    kind: str,
    q_BxHxMxK: jax.Array,
    cache: dict,
    *,
    d_head: int,
    chunk_len: int = 0,
    bucket_factors: tuple[int, ...] = (),
) -> jax.Array:
    """Queries `[B, H, M, K]` over the cached source: full attention over every real source
    key (scaled dot product), or LSH cross-attention's windows around each query's bucket in
    the keys' sorted order (`lsh.cross_windows`, the training function: queries are
    independent). A query that sees no real key gets zeros."""
    if kind == "full":
        pad = jnp.where(cache["mask"], 0.0, lsh.MASK_VALUE)[:, None, None, :]
        q = q_BxHxMxK * jnp.asarray(d_head**-0.5, q_BxHxMxK.dtype)
        return in_query_blocks(lambda q_block: attend(q_block, cache["k"], cache["v"], pad), q)
    n_buckets = lsh.n_buckets_bound(cache["rotations"][0], bucket_factors)

    def one_head(q_MxK, k_SxK, v_SxK, order_NxS, sorted_NxS, rotations_KxNxR):
        q_buckets_NxM = lsh.hash_vectors(q_MxK, rotations_KxNxR, bucket_factors or None)
        return lsh.cross_windows(
            q_MxK,
            q_buckets_NxM,
            k_SxK,
            v_SxK,
            order_NxS,
            sorted_NxS,
            chunk_len=chunk_len,
            n_buckets=n_buckets,
        )

    per_head = jax.vmap(one_head, in_axes=(0, 0, 0, 0, 0, 0))
    per_example = jax.vmap(per_head, in_axes=(0, 0, 0, 0, 0, None))
    return per_example(
        q_BxHxMxK, cache["k"], cache["v"], cache["order"], cache["sorted"], cache["rotations"]
    )
