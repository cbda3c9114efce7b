"""The chunked attention kernel shared by LSH and local attention (`reformer/attention/lsh.py`).

It works on one head over a sorted sequence described by a `Layout` (the position of each
slot, padding, buckets) and never builds an `[L, L]` array: it walks the sorted sequence in
blocks of chunks (round after round), reads each block's rows once as a slab, combines
rounds online like a streaming softmax, and its custom VJP recomputes each block's logits in
the backward pass instead of storing them, so temporary memory grows as `L * chunk_len`.
Logits and softmax are computed in float32 whatever the input dtype, so the mask constants
are always representable (bf16 inputs work).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

MASK_VALUE = -1e9  # causal, padding and (Appendix A) other-bucket masks
SELF_MASK_VALUE = -1e5  # finite: a token attends to itself only when nothing else is allowed
_MAX_BLOCK_ROWS = 1024  # sorted query rows processed per step of the chunked kernel


def unit_keys(qk_LxD: jax.Array, epsilon: float = 1e-6) -> jax.Array:
    """Shared-QK keys of unit length, exactly as trax (`length_normalized(k) / sqrt(d)`)."""
    qk = qk_LxD.astype(jnp.float32)
    d = qk.shape[-1]
    k = qk * lax.rsqrt(jnp.mean(qk * qk, axis=-1, keepdims=True) + epsilon) / math.sqrt(d)
    return k.astype(qk_LxD.dtype)


def mask_bias(
    q_pos: jax.Array,
    k_pos: jax.Array,
    k_valid: jax.Array | None,
    *,
    causal: bool,
    exclude_self: bool,
) -> jax.Array:
    """Additive float32 logit bias from (broadcastable) query/key positions, as trax does."""
    bias = jnp.zeros(jnp.broadcast_shapes(q_pos.shape, k_pos.shape), jnp.float32)
    if causal:
        bias = bias + jnp.where(k_pos > q_pos, MASK_VALUE, 0.0)
    if exclude_self:
        bias = bias + jnp.where(k_pos == q_pos, SELF_MASK_VALUE, 0.0)
    if k_valid is not None:
        bias = bias + jnp.where(k_valid, 0.0, MASK_VALUE)
    return bias


# # A "slot" is one entry of the sorted sequence: rounds laid end to end, S = n_rounds * L
# slots, cut into n_chunks = S / chunk_len chunks. Query chunk a sees key chunks
# (a + o) mod n_chunks for o in [-n_chunks_before, n_chunks_after].


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    """Static settings of the chunked kernel (hashable: a `custom_vjp` nondiff argument)."""

    length: int  # L, a multiple of chunk_len
    n_rounds: int
    chunk_len: int
    n_chunks_before: int
    n_chunks_after: int
    causal: bool
    exclude_self: bool
    attend_across_buckets: bool
    allow_duplicate_attention: bool
    dropout_rate: float
    block_chunks: int  # query chunks per step; divides length // chunk_len

    @property
    def n_chunks(self) -> int:
        return self.n_rounds * self.length // self.chunk_len

    @property
    def n_blocks(self) -> int:
        return self.n_chunks // self.block_chunks

    @property
    def window_chunks(self) -> int:
        """W: the chunks a query chunk attends to (itself and its neighbours)."""
        return self.n_chunks_before + 1 + self.n_chunks_after


class Layout(NamedTuple):
    """Integer bookkeeping of the sorted sequence (no gradients flow through it)."""

    pos_S: jax.Array  # position of each slot
    valid_L: jax.Array | None  # True = real token; None = no padding
    bucket_NxL: jax.Array | None  # bucket of each position per round (padding sorts last)
    chunk_NxL: jax.Array | None  # global chunk index of each position per round


def block_chunks(chunks_per_round: int, chunk_len: int) -> int:
    """Largest divisor of `chunks_per_round` keeping a step at most _MAX_BLOCK_ROWS rows."""
    limit = max(1, _MAX_BLOCK_ROWS // chunk_len)
    return max(b for b in range(1, min(limit, chunks_per_round) + 1) if chunks_per_round % b == 0)


def _duplicate_counts(
    cfg: ChunkConfig, q_pos_BxC: jax.Array, k_pos_BxK: jax.Array, lay: Layout
) -> jax.Array:
    """N_ij: how many times key j appears among query i's keys over all rounds.

    Counted with multiplicity (a window that wraps onto itself holds a key twice) and, when
    attention across buckets is masked, only where i and j share the bucket. Subtracting
    log N_ij from the logits makes the combined output a softmax over the union of keys.
    """
    q_chunk_NxBxC = lay.chunk_NxL[:, q_pos_BxC]
    k_chunk_NxBxK = lay.chunk_NxL[:, k_pos_BxK]
    counts_BxCxK = jnp.zeros(q_pos_BxC.shape + k_pos_BxK.shape[-1:], jnp.int32)
    offsets = range(-cfg.n_chunks_before, cfg.n_chunks_after + 1)
    for q_round in range(cfg.n_rounds):
        k_rounds = range(cfg.n_rounds) if cfg.attend_across_buckets else [q_round]
        for k_round in k_rounds:
            gap = k_chunk_NxBxK[k_round][:, None, :] - q_chunk_NxBxC[q_round][:, :, None]
            hits = sum(((gap - o) % cfg.n_chunks == 0).astype(jnp.int32) for o in offsets)
            if not cfg.attend_across_buckets:
                q_bucket = lay.bucket_NxL[q_round, q_pos_BxC][:, :, None]
                k_bucket = lay.bucket_NxL[q_round, k_pos_BxK][:, None, :]
                hits = jnp.where(q_bucket == k_bucket, hits, 0)
            counts_BxCxK = counts_BxCxK + hits
    return counts_BxCxK


class _Block(NamedTuple):
    """Block `g` of the sorted sequence: its `n_b` query chunks and their key windows.

    The windows of consecutive query chunks overlap, so rows are read once per block, as a
    "slab" of `R = n_b + n_chunks_before + n_chunks_after` chunks (chunk `g * n_b -
    n_chunks_before` on, wrapping around); query chunk `b` is slab chunk `b +
    n_chunks_before` and its window is slab chunks `b .. b + W - 1`. A gathered array is
    `[R, C, ...]`; `_queries` and `_parts` (the windows by offset) cut it without gathering
    or copying again, and `_fold` sums per-offset gradients back onto slab rows, so each row
    is scattered once per block.
    """

    slab_slot_RxC: jax.Array  # slot of each slab entry
    slab_pos_RxC: jax.Array  # position of each slab entry
    q_slot_BxC: jax.Array
    q_pos_BxC: jax.Array


def _block(cfg: ChunkConfig, g: jax.Array, lay: Layout) -> _Block:
    c, n_b, before = cfg.chunk_len, cfg.block_chunks, cfg.n_chunks_before
    n_slab = n_b + before + cfg.n_chunks_after
    slab_chunk_R = (g * n_b - before + jnp.arange(n_slab)) % cfg.n_chunks
    slab_slot_RxC = slab_chunk_R[:, None] * c + jnp.arange(c)
    slab_pos_RxC = lay.pos_S[slab_slot_RxC]
    return _Block(
        slab_slot_RxC=slab_slot_RxC,
        slab_pos_RxC=slab_pos_RxC,
        q_slot_BxC=_queries(cfg, slab_slot_RxC),
        q_pos_BxC=_queries(cfg, slab_pos_RxC),
    )


def _queries(cfg: ChunkConfig, slab_RxC: jax.Array) -> jax.Array:
    """The query chunks of a slab array: `[n_b, C, ...]`."""
    return lax.slice_in_dim(slab_RxC, cfg.n_chunks_before, cfg.n_chunks_before + cfg.block_chunks)


def _part(cfg: ChunkConfig, slab_RxC: jax.Array, w: int) -> jax.Array:
    """Each query chunk's `w`-th window chunk of a slab array: `[n_b, C, ...]`."""
    return lax.slice_in_dim(slab_RxC, w, w + cfg.block_chunks)


def _parts(cfg: ChunkConfig, slab_RxC: jax.Array) -> list[jax.Array]:
    """The windows of a slab array by offset: `_part` for every offset. Products and masks
    are taken part by part, so the overlapping windows are never copied out of the slab."""
    return [_part(cfg, slab_RxC, w) for w in range(cfg.window_chunks)]


def _fold(cfg: ChunkConfig, parts_BxCx: list[jax.Array]) -> jax.Array:
    """Transpose of `_parts`: per-offset values summed onto their slab rows (one fused sum of
    shifted copies)."""
    width = len(parts_BxCx)
    pads = [(0, 0)] * (parts_BxCx[0].ndim - 1)
    return sum(jnp.pad(part, [(w, width - 1 - w)] + pads) for w, part in enumerate(parts_BxCx))


def _window_shape(cfg: ChunkConfig) -> tuple[int, int, int]:
    """`[B, C, W * C]`: a block's logits with every window offset side by side."""
    return (cfg.block_chunks, cfg.chunk_len, cfg.window_chunks * cfg.chunk_len)


def _block_logits(
    cfg: ChunkConfig,
    blk: _Block,
    w: int,
    q_BxCxD: jax.Array,
    k_BxKxD: jax.Array,
    lay: Layout,
) -> jax.Array:
    """Masked float32 logits `[B, C, K]` of a block's window offset `w`: B chunks of C
    queries against their `w`-th window chunk, K = C keys."""
    q_pos_BxC, k_pos_BxK = blk.q_pos_BxC, _part(cfg, blk.slab_pos_RxC, w)
    logits_BxCxK = jnp.einsum("bqd,bkd->bqk", q_BxCxD, k_BxKxD, preferred_element_type=jnp.float32)
    logits_BxCxK = logits_BxCxK + mask_bias(
        q_pos_BxC[:, :, None],
        k_pos_BxK[:, None, :],
        None if lay.valid_L is None else lay.valid_L[k_pos_BxK][:, None, :],
        causal=cfg.causal,
        exclude_self=cfg.exclude_self,
    )
    if not cfg.attend_across_buckets:
        # Buckets of different rounds never match, as in trax v1 (its buckets carry offsets).
        q_round_BxC = blk.q_slot_BxC // cfg.length
        k_round_BxK = _part(cfg, blk.slab_slot_RxC, w) // cfg.length
        q_bucket_BxC = lay.bucket_NxL[q_round_BxC, q_pos_BxC]
        k_bucket_BxK = lay.bucket_NxL[k_round_BxK, k_pos_BxK]
        same_BxCxK = (q_round_BxC[:, :, None] == k_round_BxK[:, None, :]) & (
            q_bucket_BxC[:, :, None] == k_bucket_BxK[:, None, :]
        )
        logits_BxCxK = logits_BxCxK + jnp.where(same_BxCxK, 0.0, MASK_VALUE)
    if not cfg.allow_duplicate_attention:
        counts_BxCxK = _duplicate_counts(cfg, q_pos_BxC, k_pos_BxK, lay)
        logits_BxCxK = logits_BxCxK - jnp.log(jnp.maximum(counts_BxCxK, 1).astype(jnp.float32))
    return logits_BxCxK


def _block_qk(
    cfg: ChunkConfig, blk: _Block, q_LxD: jax.Array, k_LxD: jax.Array | None
) -> tuple[jax.Array, list[jax.Array], jax.Array]:
    """(queries `[B, C, D]`, key parts `_parts`, the slab rows of `q` `[R, C, D]`) of a
    block. `k_LxD` None means shared QK: the keys are the unit-length slab rows of `q`."""
    q_slab_RxCxD = q_LxD[blk.slab_pos_RxC]
    if k_LxD is None:
        k_slab_RxCxD = unit_keys(q_slab_RxCxD)
    else:
        k_slab_RxCxD = k_LxD[blk.slab_pos_RxC]
    return _queries(cfg, q_slab_RxCxD), _parts(cfg, k_slab_RxCxD), q_slab_RxCxD


def _logit_parts(
    cfg: ChunkConfig, blk: _Block, q_BxCxD: jax.Array, k_parts: list[jax.Array], lay: Layout
) -> list[jax.Array]:
    """Masked float32 logits `[B, C, C]` of each window offset."""
    return [_block_logits(cfg, blk, w, q_BxCxD, k_BxCxD, lay) for w, k_BxCxD in enumerate(k_parts)]


def _cut(cfg: ChunkConfig, x_BxCxK: jax.Array | None) -> list:
    """A window-shaped `[B, C, W * C]` array by offset (None stays None)."""
    c = cfg.chunk_len
    return [
        None if x_BxCxK is None else x_BxCxK[..., w * c : (w + 1) * c]
        for w in range(cfg.window_chunks)
    ]


def _dropout_scale(
    cfg: ChunkConfig, rng: jax.Array | None, g: jax.Array, shape: tuple[int, ...]
) -> jax.Array | None:
    """Inverted-dropout multiplier of block `g`; regenerated identically in the backward."""
    if cfg.dropout_rate == 0.0:
        return None
    keep = jax.random.bernoulli(jax.random.fold_in(rng, g), 1.0 - cfg.dropout_rate, shape)
    return keep.astype(jnp.float32) / (1.0 - cfg.dropout_rate)


def _chunked_forward(
    cfg: ChunkConfig,
    q_LxD: jax.Array,
    k_LxD: jax.Array,
    v_LxV: jax.Array,
    lay: Layout,
    rng: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Float32 output `[L, V]` over all rounds, block after block, and its softmax statistics:
    the largest logit `[L]` and the sum of `exp(logit - max)` `[L]`.

    The max and the sum are kept apart (not as one log-sum-exp) because a query that sees only
    itself has logits near -1e5, where float32 resolves only 0.008: a log-sum-exp there would
    put ~1% errors into the round weights and into the backward pass.
    """
    length, d_v = v_LxV.shape

    def step(carry, g):
        out_LxV, max_L, sum_L = carry
        blk = _block(cfg, g, lay)
        q_BxCxD, k_parts, _ = _block_qk(cfg, blk, q_LxD, k_LxD)
        logit_parts = _logit_parts(cfg, blk, q_BxCxD, k_parts, lay)
        q_pos_Q = blk.q_pos_BxC.reshape(-1)
        block_max_BxC = functools.reduce(jnp.maximum, [jnp.max(x, axis=-1) for x in logit_parts])
        exp_parts = [jnp.exp(x - block_max_BxC[:, :, None]) for x in logit_parts]
        block_sum_BxC = sum(jnp.sum(x, axis=-1) for x in exp_parts)
        scale_parts = _cut(cfg, _dropout_scale(cfg, rng, g, _window_shape(cfg)))
        v_parts = _parts(cfg, v_LxV[blk.slab_pos_RxC])
        block_out_QxV = sum(
            jnp.einsum(
                "bqk,bkv->bqv",
                ((e if sc is None else e * sc) / block_sum_BxC[:, :, None]).astype(v_LxV.dtype),
                v_BxCxV,
                preferred_element_type=jnp.float32,
            )
            for e, sc, v_BxCxV in zip(exp_parts, scale_parts, v_parts, strict=True)
        ).reshape(-1, d_v)
        block_max_Q, block_sum_Q = block_max_BxC.reshape(-1), block_sum_BxC.reshape(-1)
        # Streaming softmax: merge with what earlier rounds gave these positions (a block
        # lies in one round, so its query positions are distinct).
        old_max_Q, old_sum_Q = max_L[q_pos_Q], sum_L[q_pos_Q]
        new_max_Q = jnp.maximum(old_max_Q, block_max_Q)
        old_weight_Q = old_sum_Q * jnp.exp(old_max_Q - new_max_Q)
        block_weight_Q = block_sum_Q * jnp.exp(block_max_Q - new_max_Q)
        new_sum_Q = old_weight_Q + block_weight_Q
        new_out_QxV = (
            out_LxV[q_pos_Q] * old_weight_Q[:, None] + block_out_QxV * block_weight_Q[:, None]
        ) / new_sum_Q[:, None]
        return (
            out_LxV.at[q_pos_Q].set(new_out_QxV),
            max_L.at[q_pos_Q].set(new_max_Q),
            sum_L.at[q_pos_Q].set(new_sum_Q),
        ), None

    init = (
        jnp.zeros((length, d_v), jnp.float32),
        jnp.full((length,), -jnp.inf, jnp.float32),
        jnp.zeros((length,), jnp.float32),
    )
    (out_LxV, max_L, sum_L), _ = lax.scan(step, init, jnp.arange(cfg.n_blocks))
    return out_LxV, max_L, sum_L


def _product(subscripts: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """A backward-pass product with operands in `dtype` (bfloat16 in mixed precision, as the
    forward pass's), float32 result."""
    return jnp.einsum(
        subscripts, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def chunked_attention(
    cfg: ChunkConfig,
    q_LxD: jax.Array,
    k_LxD: jax.Array,
    v_LxV: jax.Array,
    lay: Layout,
    rng: jax.Array | None,
) -> jax.Array:
    """Chunked attention over the sorted sequence described by `lay`; output `[L, V]`.
    `k_LxD` None: shared QK, keys are the unit-length rows of `q_LxD`."""
    out_LxV, _, _ = _chunked_forward(cfg, q_LxD, k_LxD, v_LxV, lay, rng)
    return out_LxV.astype(v_LxV.dtype)


def chunked_attention_fwd(cfg, q_LxD, k_LxD, v_LxV, lay, rng):
    out_LxV, max_L, sum_L = _chunked_forward(cfg, q_LxD, k_LxD, v_LxV, lay, rng)
    # The backward pass reads the output as returned (bfloat16 in mixed precision, as
    # FlashAttention does), so no second, float32 copy of it is kept.
    out_LxV = out_LxV.astype(v_LxV.dtype)
    return out_LxV, (q_LxD, k_LxD, v_LxV, lay, rng, out_LxV, max_L, sum_L)


def chunked_attention_bwd(cfg, residuals, dout_LxV):
    """Flash-attention style backward: recompute each block's logits, never store them.

    All (round, slot) entries of a query share one softmax normalizer, so with
    P = exp(logits - max) / sum and D_i = dout_i . out_i:
    dlogits = P * (dropout_scale * dout_i . v_j - D_i).
    """
    q_LxD, k_LxD, v_LxV, lay, rng, out_LxV, max_L, sum_L = residuals
    dout_LxV = dout_LxV.astype(jnp.float32)
    delta_L = jnp.sum(dout_LxV * out_LxV.astype(jnp.float32), axis=-1)
    shared_qk = k_LxD is None
    dtype = v_LxV.dtype  # of the products' operands, as in the forward pass

    def step(carry, g):
        dq_LxD, dk_LxD, dv_LxV = carry
        blk = _block(cfg, g, lay)
        q_BxCxD, k_parts, q_slab_RxCxD = _block_qk(cfg, blk, q_LxD, k_LxD)
        logit_parts = _logit_parts(cfg, blk, q_BxCxD, k_parts, lay)
        q_pos_BxC = blk.q_pos_BxC
        max_BxC, sum_BxC = max_L[q_pos_BxC][:, :, None], sum_L[q_pos_BxC][:, :, None]
        delta_BxC = delta_L[q_pos_BxC][:, :, None]
        scale_parts = _cut(cfg, _dropout_scale(cfg, rng, g, _window_shape(cfg)))
        dout_BxCxV = dout_LxV[q_pos_BxC]
        v_parts = _parts(cfg, v_LxV[blk.slab_pos_RxC])
        dq_BxCxD, dk_parts, dv_parts = 0.0, [], []
        for logits_BxCxC, scale, k_BxCxD, v_BxCxV in zip(
            logit_parts, scale_parts, k_parts, v_parts, strict=True
        ):
            # exp(logits - max) / sum, factored through this part's own row maximum: then
            # the masked logits have two users, so XLA:CPU keeps the mask (and its reads of the
            # positions) out of the exponential's loop, which it otherwise runs ~10x slower.
            local_BxC = jnp.max(logits_BxCxC, axis=-1, keepdims=True)
            probs_BxCxC = jnp.exp(logits_BxCxC - local_BxC) * (
                jnp.exp(local_BxC - max_BxC) / sum_BxC
            )
            dropped_BxCxC = probs_BxCxC if scale is None else probs_BxCxC * scale
            dv_parts.append(_product("bqk,bqv->bkv", dropped_BxCxC, dout_BxCxV, dtype))
            dprobs_BxCxC = _product("bqv,bkv->bqk", dout_BxCxV, v_BxCxV, dtype)
            if scale is not None:
                dprobs_BxCxC = dprobs_BxCxC * scale
            dlogits_BxCxC = probs_BxCxC * (dprobs_BxCxC - delta_BxC)
            dq_BxCxD = dq_BxCxD + _product("bqk,bkd->bqd", dlogits_BxCxC, k_BxCxD, dtype)
            dk_parts.append(_product("bqk,bqd->bkd", dlogits_BxCxC, q_BxCxD, dtype))
        # Per-offset key and value gradients summed onto the slab: each row once.
        slab_pos_P = blk.slab_pos_RxC.reshape(-1)
        dk_slab_RxCxD = _fold(cfg, dk_parts)
        if shared_qk:  # Through the keys' normalization into the same rows' gradient.
            _, norm_vjp = jax.vjp(unit_keys, q_slab_RxCxD.astype(jnp.float32))
            (drow_RxCxD,) = norm_vjp(dk_slab_RxCxD)
            before = cfg.n_chunks_before
            drow_RxCxD = drow_RxCxD.at[before : before + cfg.block_chunks].add(dq_BxCxD)
            dq_LxD = dq_LxD.at[slab_pos_P].add(drow_RxCxD.reshape(-1, drow_RxCxD.shape[-1]))
        else:
            dq_LxD = dq_LxD.at[q_pos_BxC.reshape(-1)].add(dq_BxCxD.reshape(-1, dq_BxCxD.shape[-1]))
            dk_LxD = dk_LxD.at[slab_pos_P].add(dk_slab_RxCxD.reshape(-1, dk_slab_RxCxD.shape[-1]))
        dv_slab_RxCxV = _fold(cfg, dv_parts)
        return (
            dq_LxD,
            dk_LxD,
            dv_LxV.at[slab_pos_P].add(dv_slab_RxCxV.reshape(-1, dv_slab_RxCxV.shape[-1])),
        ), None

    init = (
        jnp.zeros(q_LxD.shape, jnp.float32),
        None if shared_qk else jnp.zeros(k_LxD.shape, jnp.float32),
        jnp.zeros(v_LxV.shape, jnp.float32),
    )
    (dq_LxD, dk_LxD, dv_LxV), _ = lax.scan(step, init, jnp.arange(cfg.n_blocks))
    return (
        dq_LxD.astype(q_LxD.dtype),
        None if shared_qk else dk_LxD.astype(k_LxD.dtype),
        dv_LxV.astype(v_LxV.dtype),
        None,
        None,
    )


chunked_attention.defvjp(chunked_attention_fwd, chunked_attention_bwd)
