"""LSH, local, full and cross attention as pure functions on one head.

Everything here works on a single head: no batch or head axes (the modules in
`reformer/attention/self_attention.py` and `cross_attention.py` `vmap` over them). The
semantics are those of trax's `LSHSelfAttention` and HuggingFace's `ReformerAttention`
(docs/architecture.md records how this code realizes them):

- shared QK: keys are `qk / ||qk||`, logits `q . k_hat` with no further scaling;
- hashing: `argmax(concat([x R, -x R]))` per round; padding goes to an extra last bucket;
- per round a stable sort by bucket; rounds laid end to end; chunks of `chunk_len` attend to
  themselves and `n_chunks_before` / `n_chunks_after` neighbours, wrapping around;
- masks are added to the logits: causal and padding `-1e9`, self `-1e5`;
- rounds combine by their log-sum-exp.

LSH and local attention share one chunked kernel (`chunked.py`), which never builds
an `[L, L]` array and recomputes its logits in the backward pass; this module lays out the
sequence for it (padding, hashing, the per-round sort). Full attention (causal in blocks of
query rows) and cross-attention (full, or LSH over keys sorted by bucket) are computed here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

# The mask constants and the hashing functions are part of this module's interface.
from reformer.attention.chunked import (  # noqa: F401
    MASK_VALUE,
    SELF_MASK_VALUE,
    ChunkConfig,
    Layout,
    block_chunks,
    chunked_attention,
    mask_bias,
    unit_keys,
)
from reformer.attention.hashing import (  # noqa: F401
    buckets_from_rotated,
    default_n_buckets,
    hash_vectors,
    rotation_width,
)
from reformer.attention.hashing import pad_length as _pad_length
from reformer.attention.hashing import round_up as _round_up

_PAD_BUCKET = jnp.iinfo(jnp.int32).max  # sorts padding after every real bucket


def prepare_qk(
    q_LxD: jax.Array, k_LxD: jax.Array | None, *, keys: bool = True
) -> tuple[jax.Array, jax.Array | None, bool]:
    """(queries, keys, exclude_self): shared QK if `k` is None, else scaled dot product.
    With `keys=False` shared QK gives no keys: the chunked kernel normalizes the rows it
    gathers itself, so no whole-sequence key array is kept for the backward pass."""
    q_LxD = jnp.asarray(q_LxD)
    if k_LxD is None:
        return q_LxD, unit_keys(q_LxD) if keys else None, True
    scale = jnp.asarray(q_LxD.shape[-1] ** -0.5, q_LxD.dtype)
    return q_LxD * scale, jnp.asarray(k_LxD), False


def _check_dropout(dropout_rate: float, dropout_rng: jax.Array | None) -> None:
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError("dropout_rate > 0 needs a dropout_rng")


CAUSAL_BLOCK_LEN = 256  # query rows per block of causal full attention (see full_attention)


def full_attention(
    q_LxD: jax.Array,
    k_LxD: jax.Array | None,
    v_LxV: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    block_len: int | None = None,
) -> jax.Array:
    """Attention over all L keys: the O(L^2) baseline.

    With `k_LxD=None` it runs in shared-QK mode with exactly the LSH logits and masks (unit
    keys, no scaling, self mask): an LSH-trained model evaluated "with full attention".
    Otherwise it is standard scaled dot-product attention. `mask` is `[L]`, True = real token.

    Causal attention is computed in blocks of `block_len` query rows (default
    `CAUSAL_BLOCK_LEN`), block i against keys `[0, end of block i)` only: the same function
    (each row's softmax is over the same keys), about half the work and memory of the
    `[L, L]` logits, since the masked upper triangle is never computed. `block_len >= L`, or
    non-causal attention, builds the whole `[L, L]` logits. With dropout, block i draws its
    mask from `fold_in(dropout_rng, i)` (a single block from `dropout_rng` itself).
    """
    _check_dropout(dropout_rate, dropout_rng)
    if block_len is not None and block_len < 1:
        raise ValueError(f"block_len must be >= 1 or None, got {block_len}")
    q_LxD, k_LxD, exclude_self = prepare_qk(q_LxD, k_LxD)
    v_LxV = jnp.asarray(v_LxV)
    length = q_LxD.shape[0]
    pos_L = jnp.arange(length)
    block = length if not causal else min(block_len or CAUSAL_BLOCK_LEN, length)
    outs = []
    for i, start in enumerate(range(0, length, block)):
        stop = min(start + block, length)
        keys = stop if causal else length  # causal: later keys are masked anyway
        logits_QxK = jnp.einsum(
            "qd,kd->qk", q_LxD[start:stop], k_LxD[:keys], preferred_element_type=jnp.float32
        )
        logits_QxK = logits_QxK + mask_bias(
            pos_L[start:stop, None],
            pos_L[None, :keys],
            None if mask is None else mask[None, :keys],
            causal=causal,
            exclude_self=exclude_self,
        )
        probs_QxK = jax.nn.softmax(logits_QxK, axis=-1)
        if dropout_rate > 0.0:
            rng = dropout_rng if block == length else jax.random.fold_in(dropout_rng, i)
            keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, probs_QxK.shape)
            probs_QxK = jnp.where(keep, probs_QxK / (1.0 - dropout_rate), 0.0)
        outs.append(
            jnp.einsum(
                "qk,kv->qv",
                probs_QxK.astype(v_LxV.dtype),
                v_LxV[:keys],
                preferred_element_type=jnp.float32,
            )
        )
    out_LxV = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
    return out_LxV.astype(v_LxV.dtype)


def _padded_mask(mask_L: jax.Array | None, length: int, padded: int) -> jax.Array | None:
    """The padding mask after padding to `padded` (None when nothing is masked)."""
    if mask_L is None and padded == length:
        return None
    if mask_L is None:
        return jnp.arange(padded) < length
    return _pad_length(jnp.asarray(mask_L, bool), padded)


def _check_chunking(chunk_len: int, n_chunks_before: int, n_chunks_after: int) -> None:
    if chunk_len < 1 or n_chunks_before < 0 or n_chunks_after < 0:
        raise ValueError(
            f"need chunk_len >= 1 and n_chunks_before/after >= 0, got {chunk_len}, "
            f"{n_chunks_before}, {n_chunks_after}"
        )


def local_plan(
    length: int,
    *,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    exclude_self: bool,
    mask: jax.Array | None,
    dropout_rate: float = 0.0,
    wrap: bool = True,
) -> tuple[ChunkConfig, Layout]:
    """`local_attention`'s kernel settings and layout of `length` positions (also read by
    `reformer/inspection/`): position order, padded to whole chunks (and for `wrap=False`)."""
    padded = _round_up(length, chunk_len)
    if not wrap:
        padded += max(n_chunks_before, n_chunks_after) * chunk_len
    cfg = ChunkConfig(
        length=padded,
        n_rounds=1,
        chunk_len=chunk_len,
        n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after,
        causal=causal,
        exclude_self=exclude_self,
        attend_across_buckets=True,
        allow_duplicate_attention=True,
        dropout_rate=dropout_rate,
        block_chunks=block_chunks(padded // chunk_len, chunk_len),
    )
    pos_S = jnp.arange(padded, dtype=jnp.int32)
    lay = Layout(pos_S, _padded_mask(mask, length, padded), bucket_NxL=None, chunk_NxL=None)
    return cfg, lay


def local_attention(
    q_LxD: jax.Array,
    k_LxD: jax.Array | None,
    v_LxV: jax.Array,
    *,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    causal: bool = False,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    wrap: bool = True,
) -> jax.Array:
    """Chunked local attention: each chunk attends to itself and its neighbour chunks.

    As in trax, neighbours wrap around (the first chunk sees the last; causal masking hides
    it). `wrap=False` (the bidirectional encoder) sees no chunk across the sequence's ends:
    `max(n_chunks_before, n_chunks_after)` chunks of masked padding are appended inside, so
    a chunk's neighbours past either end are padding, and appending padding to the input
    changes nothing at real positions. Scaled dot product with separate `k`, or shared QK
    with LSH masks if `k` is None. A length that is not a multiple of `chunk_len` is padded
    and masked inside.
    """
    _check_chunking(chunk_len, n_chunks_before, n_chunks_after)
    _check_dropout(dropout_rate, dropout_rng)
    length = q_LxD.shape[0]
    q_LxD, k_LxD, exclude_self = prepare_qk(q_LxD, k_LxD, keys=False)
    v_LxV = jnp.asarray(v_LxV)
    cfg, lay = local_plan(
        length,
        chunk_len=chunk_len,
        n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after,
        causal=causal,
        exclude_self=exclude_self,
        mask=mask,
        dropout_rate=dropout_rate,
        wrap=wrap,
    )
    padded = cfg.length
    out_LxV = chunked_attention(
        cfg,
        _pad_length(q_LxD, padded),
        None if k_LxD is None else _pad_length(k_LxD, padded),
        _pad_length(v_LxV, padded),
        lay,
        dropout_rng if dropout_rate > 0.0 else None,
    )
    return out_LxV[:length]


def n_buckets_bound(rotations_DxNxR: jax.Array | None, factors: tuple[int, ...] | None):
    """Number of buckets the hash gives (buckets are below it), or None if unknown."""
    if factors:
        return math.prod(factors)
    return None if rotations_DxNxR is None else 2 * rotations_DxNxR.shape[-1]


def _sort_by_bucket(
    sort_key_NxL: jax.Array, ticker_NxL: jax.Array, n_buckets: int | None
) -> jax.Array:
    """Per round, the positions ordered by `sort_key` (bucket, `_PAD_BUCKET` for padding),
    ties by position.

    When `bucket * L + position` fits in int32 the sort is over that one combined key (no
    ties, so no stable sort needed; padding counts as bucket `n_buckets`): several times faster on
    XLA:CPU than the two-operand stable sort, which remains the fallback (e.g. a million
    positions with thousands of buckets, or an unknown bucket count).
    """
    length = sort_key_NxL.shape[1]
    if n_buckets is not None and (n_buckets + 1) * length <= jnp.iinfo(jnp.int32).max:
        key_NxL = jnp.minimum(sort_key_NxL, n_buckets)
        return lax.sort(key_NxL * length + ticker_NxL, dimension=1) % length
    _, perm_NxL = lax.sort((sort_key_NxL, ticker_NxL), dimension=1, is_stable=True, num_keys=1)
    return perm_NxL


def _round_buckets(
    qk_LxD: jax.Array,
    rotations_DxNxR: jax.Array | None,
    buckets: jax.Array | None,
    bucket_factors: tuple[int, ...] | None,
    padded: int,
) -> jax.Array:
    """Each round's bucket of each of the `padded` positions, `[N, padded]` int32: hashed
    from the (padded) `qk_LxD`, or the given `buckets` padded with zeros (no gradient)."""
    if buckets is not None:
        return _pad_length(lax.stop_gradient(buckets).astype(jnp.int32), padded, axis=1)
    if rotations_DxNxR is None:
        raise ValueError("lsh_attention needs rotations_DxNxR or buckets")
    return hash_vectors(qk_LxD, rotations_DxNxR, bucket_factors)


def _sorted_layout(
    buckets_NxL: jax.Array,
    valid_L: jax.Array | None,
    n_buckets: int | None,
    chunk_len: int,
    *,
    attend_across_buckets: bool,
    allow_duplicate_attention: bool,
) -> Layout:
    """The kernel's view of the hashed sequence: per round the positions in a stable sort by
    bucket (ties keep position order, padding goes last), rounds laid end to end. The
    kernel gets the sort keys only to mask other buckets, and each position's chunk in the
    sorted rounds only to count duplicate attention (paper, Appendix A)."""
    n_rounds, padded = buckets_NxL.shape
    sort_key_NxL = buckets_NxL if valid_L is None else jnp.where(valid_L, buckets_NxL, _PAD_BUCKET)
    ticker_NxL = jnp.broadcast_to(jnp.arange(padded, dtype=jnp.int32), sort_key_NxL.shape)
    perm_NxL = _sort_by_bucket(sort_key_NxL, ticker_NxL, n_buckets)
    chunk_NxL = None
    if not allow_duplicate_attention:
        # Where each position lands in its round's sorted order, then that slot's chunk.
        rank_NxL = (
            jnp.zeros_like(perm_NxL).at[jnp.arange(n_rounds)[:, None], perm_NxL].set(ticker_NxL)
        )
        chunk_NxL = (rank_NxL + jnp.arange(n_rounds)[:, None] * padded) // chunk_len
    return Layout(
        pos_S=perm_NxL.reshape(-1),
        valid_L=valid_L,
        bucket_NxL=None if attend_across_buckets else sort_key_NxL,
        chunk_NxL=chunk_NxL,
    )


def lsh_plan(
    buckets_NxP: jax.Array,
    length: int,
    mask_L: jax.Array | None,
    n_buckets: int | None,
    *,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    attend_across_buckets: bool,
    allow_duplicate_attention: bool,
    dropout_rate: float,
) -> tuple[ChunkConfig, Layout]:
    """`lsh_attention`'s kernel settings and layout (also read by `reformer/inspection/`):
    the buckets `[N, P]` of `length` positions padded to whole chunks, sorted per round."""
    n_rounds, padded = buckets_NxP.shape
    lay = _sorted_layout(
        buckets_NxP,
        _padded_mask(mask_L, length, padded),
        n_buckets,
        chunk_len,
        attend_across_buckets=attend_across_buckets,
        allow_duplicate_attention=allow_duplicate_attention,
    )
    cfg = ChunkConfig(
        length=padded,
        n_rounds=n_rounds,
        chunk_len=chunk_len,
        n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after,
        causal=causal,
        exclude_self=True,
        attend_across_buckets=attend_across_buckets,
        allow_duplicate_attention=allow_duplicate_attention,
        dropout_rate=dropout_rate,
        block_chunks=block_chunks(padded // chunk_len, chunk_len),
    )
    return cfg, lay


def lsh_attention(
    qk_LxD: jax.Array,
    v_LxV: jax.Array,
    rotations_DxNxR: jax.Array | None,
    *,
    chunk_len: int,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    causal: bool = False,
    mask: jax.Array | None = None,
    attend_across_buckets: bool = True,
    allow_duplicate_attention: bool = True,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    buckets: jax.Array | None = None,
    bucket_factors: tuple[int, ...] | None = None,
    n_buckets: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Reformer LSH self-attention on one head; returns `(out [L, V], buckets [N, L])`.

    `qk_LxD` is the shared query/key projection, `rotations_DxNxR` the hash rotations (N
    rounds of `rotation_width(n_buckets, bucket_factors)` columns). If `buckets` (`[N, L]`,
    as returned) is given it is used instead of hashing and `rotations_DxNxR` may be None:
    the reversible backward pass recomputes attention with the forward pass's buckets.
    `mask` is `[L]`, True = real token; padding sorts after every bucket of its round. A
    length that is not a multiple of `chunk_len` is padded and masked inside.
    `attend_across_buckets=False` and `allow_duplicate_attention=False` are the paper's
    Appendix A options. `bucket_factors` hashes into factorized buckets
    (`buckets_from_rotated`). `n_buckets` (optional; known from the rotations when they are
    given) bounds the bucket values, which lets the sort use one key (`_sort_by_bucket`)
    when `buckets` are given without rotations. The chunked kernel attends within each
    round's sorted chunks and combines the rounds by their log-sum-exp.
    """
    _check_chunking(chunk_len, n_chunks_before, n_chunks_after)
    _check_dropout(dropout_rate, dropout_rng)
    length = qk_LxD.shape[0]
    padded = _round_up(length, chunk_len)
    qk_LxD = _pad_length(jnp.asarray(qk_LxD), padded)
    v_LxV = _pad_length(jnp.asarray(v_LxV), padded)
    buckets_NxL = _round_buckets(qk_LxD, rotations_DxNxR, buckets, bucket_factors, padded)
    cfg, lay = lsh_plan(
        buckets_NxL,
        length,
        mask,
        n_buckets or n_buckets_bound(rotations_DxNxR, bucket_factors),
        chunk_len=chunk_len,
        n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after,
        causal=causal,
        attend_across_buckets=attend_across_buckets,
        allow_duplicate_attention=allow_duplicate_attention,
        dropout_rate=dropout_rate,
    )
    out_LxV = chunked_attention(
        cfg, qk_LxD, None, v_LxV, lay, dropout_rng if dropout_rate > 0.0 else None
    )
    return out_LxV[:length], buckets_NxL[:, :length]


def cross_attention(
    q_TxD: jax.Array,
    k_SxD: jax.Array,
    v_SxV: jax.Array,
    *,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    block_len: int = CAUSAL_BLOCK_LEN,
) -> jax.Array:
    """Full cross-attention: T queries (the decoder's) over S keys (the encoder output's),
    scaled dot product, in blocks of `block_len` query rows (so `[block_len, S]` logits at
    a time). `mask` is `[S]`, True = a real source token. A query with no real key (an
    empty source) gets a zero output."""
    _check_dropout(dropout_rate, dropout_rng)
    scale = jnp.asarray(q_TxD.shape[-1] ** -0.5, q_TxD.dtype)
    v_SxV = v_SxV if mask is None else jnp.where(mask[:, None], v_SxV, 0).astype(v_SxV.dtype)
    bias_S = None if mask is None else jnp.where(mask, 0.0, MASK_VALUE)
    outs = []
    for i, start in enumerate(range(0, q_TxD.shape[0], block_len)):
        q = q_TxD[start : start + block_len] * scale
        logits_QxS = jnp.einsum("qd,sd->qs", q, k_SxD, preferred_element_type=jnp.float32)
        if bias_S is not None:
            logits_QxS = logits_QxS + bias_S
        probs_QxS = jax.nn.softmax(logits_QxS, axis=-1)
        if dropout_rate > 0.0:
            keep = jax.random.bernoulli(
                jax.random.fold_in(dropout_rng, i), 1.0 - dropout_rate, probs_QxS.shape
            )
            probs_QxS = jnp.where(keep, probs_QxS / (1.0 - dropout_rate), 0.0)
        outs.append(
            jnp.einsum(
                "qs,sv->qv",
                probs_QxS.astype(v_SxV.dtype),
                v_SxV,
                preferred_element_type=jnp.float32,
            )
        )
    out_TxV = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
    return out_TxV.astype(v_SxV.dtype)


# Queries per step of LSH cross-attention: each gathers `n_hashes * 2 * chunk_len` keys and
# values, which a step holds for all heads at once (they are mapped outside the loop).
CROSS_BLOCK_LEN = 64


def sort_keys(k_buckets_NxS: jax.Array, mask_S: jax.Array | None, n_buckets: int):
    """Per round, the keys ordered by bucket (ties by position), padding (`mask_S` False)
    last: `(order [N, S], the buckets in that order [N, S], padding as n_buckets)`."""
    key_NxS = k_buckets_NxS if mask_S is None else jnp.where(mask_S, k_buckets_NxS, n_buckets)
    ticker_NxS = jnp.broadcast_to(jnp.arange(key_NxS.shape[1], dtype=jnp.int32), key_NxS.shape)
    order_NxS = _sort_by_bucket(key_NxS, ticker_NxS, n_buckets)
    return order_NxS, jnp.take_along_axis(key_NxS, order_NxS, axis=1)


def cross_windows(
    q_TxD: jax.Array,
    q_buckets_NxT: jax.Array,
    k_unit_SxD: jax.Array,
    v_SxV: jax.Array,
    order_NxS: jax.Array,
    sorted_NxS: jax.Array,
    *,
    chunk_len: int,
    n_buckets: int,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    block_len: int = CROSS_BLOCK_LEN,
) -> jax.Array:
    """LSH cross-attention of queries over keys sorted by bucket (`sort_keys`): in each
    round, a query sees the `2 * chunk_len` keys around where its bucket falls in the keys'
    sorted order (`chunk_len` on either side); all rounds' windows share one softmax (a key
    in several windows counts once per window), logits `q . k_unit`. Padded keys and slots
    past either end are masked; a query that sees no real key gets a zero output. Queries are
    independent of each other, so one query decodes exactly as in training. `block_len`
    queries at a time."""
    n_keys = k_unit_SxD.shape[0]
    offsets_W = jnp.arange(2 * chunk_len) - chunk_len

    def block(q_QxD, q_buckets_NxQ, rng):
        pos_NxQ = jax.vmap(jnp.searchsorted)(sorted_NxS, q_buckets_NxQ)
        slots_NxQxW = pos_NxQ[..., None] + offsets_W
        inside = (slots_NxQxW >= 0) & (slots_NxQxW < n_keys)
        slots_NxQxW = jnp.clip(slots_NxQxW, 0, n_keys - 1)
        flat = slots_NxQxW.reshape(slots_NxQxW.shape[0], -1)
        keys_NxQxW = jnp.take_along_axis(order_NxS, flat, axis=1).reshape(slots_NxQxW.shape)
        real_NxQxW = inside & (
            jnp.take_along_axis(sorted_NxS, flat, axis=1).reshape(slots_NxQxW.shape) < n_buckets
        )
        logits = jnp.einsum(
            "qd,nqwd->qnw", q_QxD, k_unit_SxD[keys_NxQxW], preferred_element_type=jnp.float32
        )
        real_QxNxW = jnp.moveaxis(real_NxQxW, 0, 1)
        logits = jnp.where(real_QxNxW, logits, MASK_VALUE).reshape(q_QxD.shape[0], -1)
        probs = jax.nn.softmax(logits, axis=-1)
        if dropout_rate > 0.0:
            keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, probs.shape)
            probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
        values = jnp.moveaxis(v_SxV[keys_NxQxW], 0, 1).reshape(q_QxD.shape[0], -1, v_SxV.shape[-1])
        out = jnp.einsum(
            "qe,qev->qv", probs.astype(v_SxV.dtype), values, preferred_element_type=jnp.float32
        )
        seen = jnp.any(real_QxNxW.reshape(q_QxD.shape[0], -1), axis=-1, keepdims=True)
        return jnp.where(seen, out, 0.0).astype(v_SxV.dtype)

    n_queries = q_TxD.shape[0]
    if n_queries <= block_len:
        return block(q_TxD, q_buckets_NxT, dropout_rng)
    n_blocks = -(-n_queries // block_len)
    padded = n_blocks * block_len
    q_blocks = _pad_length(q_TxD, padded).reshape(n_blocks, block_len, -1)
    b_blocks = _pad_length(q_buckets_NxT, padded, axis=1).reshape(-1, n_blocks, block_len)
    rngs = (
        jax.random.split(dropout_rng, n_blocks)
        if dropout_rng is not None
        else jnp.zeros((n_blocks,), jnp.int32)
    )

    def one(args):
        q, b, r = args
        return block(q, b, r if dropout_rng is not None else None)

    out = jax.lax.map(jax.checkpoint(one), (q_blocks, jnp.moveaxis(b_blocks, 1, 0), rngs))
    return out.reshape(padded, -1)[:n_queries]


def lsh_cross_attention(
    q_TxD: jax.Array,
    k_SxD: jax.Array,
    v_SxV: jax.Array,
    rotations_DxNxR: jax.Array | None,
    *,
    chunk_len: int,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    buckets: jax.Array | None = None,
    bucket_factors: tuple[int, ...] | None = None,
    n_buckets: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """LSH cross-attention: T decoder queries over S encoder keys hashed in one shared-QK
    space (the same rotations); returns `(out [T, V], buckets [N, T + S])` (the queries'
    then the keys'; given as `buckets`, they are used instead of hashing, as the reversible
    backward pass does).

    Per round the keys are sorted by bucket (`sort_keys`) and each query attends to the
    `2 * chunk_len` keys around where its bucket falls in that order (`cross_windows`), with
    the shared-QK logits `q . k / ||k||`. `mask` is `[S]`, True = a real source token.
    Memory and work grow as `(T + S) * chunk_len` per round; decoding computes the same
    function one query at a time (`caches.cross_attention_step`).
    """
    _check_dropout(dropout_rate, dropout_rng)
    n_queries = q_TxD.shape[0]
    n_buckets = n_buckets or n_buckets_bound(rotations_DxNxR, bucket_factors)
    if buckets is None:
        if rotations_DxNxR is None:
            raise ValueError("lsh_cross_attention needs rotations_DxNxR or buckets")
        buckets_NxI = jnp.concatenate(
            [
                hash_vectors(q_TxD, rotations_DxNxR, bucket_factors),
                hash_vectors(k_SxD, rotations_DxNxR, bucket_factors),
            ],
            axis=1,
        )
    else:
        buckets_NxI = lax.stop_gradient(buckets).astype(jnp.int32)
    order_NxS, sorted_NxS = sort_keys(buckets_NxI[:, n_queries:], mask, n_buckets)
    v_SxV = v_SxV if mask is None else jnp.where(mask[:, None], v_SxV, 0).astype(v_SxV.dtype)
    out = cross_windows(
        q_TxD,
        buckets_NxI[:, :n_queries],
        unit_keys(k_SxD),
        v_SxV,
        order_NxS,
        sorted_NxS,
        chunk_len=chunk_len,
        n_buckets=n_buckets,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
    )
    return out, buckets_NxI
