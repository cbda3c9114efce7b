"""One head's attention pattern made explicit: for each query, every key its attention reads
(per hash round), the masked logits and the weights the combined softmax gives them.

The kernels never build these (`reformer/attention/chunked.py` walks sorted chunks); here
they are laid out for a window of queries at a time, from the kernels' own plans
(`lsh.lsh_plan`, `lsh.local_plan`: the per-round sort by the layer's buckets, the chunks, the
padding) and with their masks (`chunked.mask_bias`, shared-QK unit keys): a query in sorted
slot `s` of round `r` reads the `chunk_len` slots of each chunk from `s // chunk_len -
n_chunks_before` to `s // chunk_len + n_chunks_after` (wrapping around), and full attention
reads every position. All entries of a query share one softmax, which is the rounds' outputs
combined with the weights `exp(z_r - logsumexp_r z_r)` (DESIGN.md); `tests/test_inspect.py`
checks that the weights reproduce the layer's output.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from reformer.attention import lsh
from reformer.attention.chunked import MASK_VALUE, ChunkConfig, Layout, mask_bias
from reformer.attention.hashing import default_n_buckets, pad_length, round_up

_BLOCK_ELEMENTS = 1 << 22  # gathered key elements alive at once while expanding


class Plan(NamedTuple):
    """Where one head's queries look: a chunked layout (`cfg`, `lay` of the kernel), or
    full attention over every position (`cfg` None)."""

    cfg: ChunkConfig | None
    lay: Layout | None
    length: int  # real positions
    causal: bool
    valid_L: jax.Array | None  # full attention's padding mask (True = real)


class Pattern(NamedTuple):
    """What each of Q queries reads, in N rounds of E entries (full attention: one round
    of every position). `keys` are key positions (>= the length: chunk padding);
    `visible` is False where a -1e9 mask hides the key (causal, padding, another bucket),
    True for the rest, including the query itself (masked at -1e5: it counts only when
    nothing else is visible); `weights` sum to 1 over each query's entries; a key read in
    several entries gets their sum."""

    keys_QxNxE: jax.Array
    visible_QxNxE: jax.Array
    weights_QxNxE: jax.Array
    round_weights_QxN: jax.Array  # each round's share of the query's attention


def n_buckets_of(module: nn.Module, length: int) -> int:
    """The bucket count of an LSH module at `length`, as the module computes it."""
    return module.n_buckets or default_n_buckets(length, module.chunk_len)


def head_plan(
    module: nn.Module, kind: str, mask_L: jax.Array | None, buckets_NxL: jax.Array | None, length
) -> Plan:
    """The plan of one head of the attention `module` (of type `kind`) over `length`
    positions; LSH heads need their buckets `[N, L]`."""
    if kind in ("full", "full_shared_qk"):
        return Plan(None, None, length, module.causal, mask_L)
    chunks = dict(
        chunk_len=module.chunk_len,
        n_chunks_before=module.n_chunks_before,
        n_chunks_after=module.n_chunks_after,
        causal=module.causal,
    )
    if kind == "local":
        cfg, lay = lsh.local_plan(
            length, exclude_self=False, mask=mask_L, wrap=module.wrap, **chunks
        )
        return Plan(cfg, lay, length, module.causal, None)
    padded = round_up(length, module.chunk_len)
    cfg, lay = lsh.lsh_plan(
        pad_length(buckets_NxL.astype(jnp.int32), padded, axis=1),
        length,
        mask_L,
        n_buckets_of(module, length),
        attend_across_buckets=module.attend_across_buckets,
        allow_duplicate_attention=module.allow_duplicate_attention,
        dropout_rate=0.0,
        **chunks,
    )
    return Plan(cfg, lay, length, module.causal, None)


def _chunk_entries(cfg: ChunkConfig, lay: Layout, q_pos_Q: jax.Array):
    """`(key positions, round of each key's slot)`, both `[Q, N, E]`: the slots of the chunks
    each query's chunk attends to in each round (E = chunks in a window * chunk_len)."""
    n, length, c = cfg.n_rounds, cfg.length, cfg.chunk_len
    perm_NxL = lay.pos_S.reshape(n, length)
    rank_NxL = jnp.zeros_like(perm_NxL).at[jnp.arange(n)[:, None], perm_NxL].set(jnp.arange(length))
    slot_QxN = rank_NxL[:, q_pos_Q].T + jnp.arange(n) * length
    offsets_W = jnp.arange(-cfg.n_chunks_before, cfg.n_chunks_after + 1)
    chunk_QxNxW = (slot_QxN[..., None] // c + offsets_W) % cfg.n_chunks
    slots_QxNxE = (chunk_QxNxW[..., None] * c + jnp.arange(c)).reshape(len(q_pos_Q), n, -1)
    return lay.pos_S[slots_QxNxE], slots_QxNxE // length


def _masks(plan: Plan, q_pos_Q, keys_QxNxE, key_round_QxNxE, exclude_self: bool):
    """`(bias, counts)` `[Q, N, E]`: the kernel's additive masks (causal, self, padding,
    other buckets) and, without duplicate attention, how many entries read each key."""
    cfg, lay = plan.cfg, plan.lay
    valid = plan.valid_L if cfg is None else lay.valid_L
    q_pos = q_pos_Q[:, None, None]
    bias = mask_bias(
        q_pos,
        keys_QxNxE,
        None if valid is None else valid[keys_QxNxE],
        causal=plan.causal,
        exclude_self=exclude_self,
    )
    if cfg is None:
        return bias, None
    same = jnp.ones(keys_QxNxE.shape, bool)
    if not cfg.attend_across_buckets:
        round_N1 = jnp.arange(cfg.n_rounds)[:, None]
        same = (key_round_QxNxE == round_N1) & (
            lay.bucket_NxL[round_N1, keys_QxNxE] == lay.bucket_NxL[round_N1, q_pos]
        )
        bias = bias + jnp.where(same, 0.0, MASK_VALUE)
    if cfg.allow_duplicate_attention:
        return bias, None
    flat_k, flat_s = keys_QxNxE.reshape(len(q_pos_Q), -1), same.reshape(len(q_pos_Q), -1)
    counts = jnp.sum((flat_k[:, :, None] == flat_k[:, None, :]) & flat_s[:, None, :], axis=-1)
    return bias, counts.reshape(keys_QxNxE.shape)


def _expand_block(plan: Plan, q_LxD, k_LxD, exclude_self: bool, q_pos_Q) -> Pattern:
    """`expand` for one block of queries, from the prepared queries and keys."""
    q_QxD = q_LxD[q_pos_Q]
    if plan.cfg is None:
        keys = jnp.broadcast_to(jnp.arange(plan.length), (len(q_pos_Q), 1, plan.length))
        key_round = jnp.zeros_like(keys)
        raw = jnp.einsum("qd,kd->qk", q_QxD, k_LxD, preferred_element_type=jnp.float32)[:, None]
    else:
        keys, key_round = _chunk_entries(plan.cfg, plan.lay, q_pos_Q)
        raw = jnp.einsum("qd,qned->qne", q_QxD, k_LxD[keys], preferred_element_type=jnp.float32)
    bias, counts = _masks(plan, q_pos_Q, keys, key_round, exclude_self)
    logits = raw + bias
    if counts is not None:
        logits = logits - jnp.log(jnp.maximum(counts, 1).astype(jnp.float32))
    # As the kernel: the largest logit and the sum kept apart (a query that sees only
    # itself has logits near -1e5, where a log-sum-exp would lose 1%).
    top_Q = jnp.max(logits, axis=(1, 2), keepdims=True)
    exp = jnp.exp(logits - top_Q)
    weights = exp / jnp.sum(exp, axis=(1, 2), keepdims=True)
    return Pattern(keys, bias > MASK_VALUE / 2, weights, jnp.sum(weights, axis=2))


def _key_length(plan: Plan) -> int:
    """Positions the keys index: the chunked layout's padded length, or the real one."""
    return plan.length if plan.cfg is None else plan.cfg.length


def expand(plan: Plan, q_LxD: jax.Array, k_LxD: jax.Array | None, q_pos_Q: jax.Array) -> Pattern:
    """The pattern of the queries at `q_pos_Q` of one head: `q_LxD` its queries (shared QK:
    its query-keys, `k_LxD` None), `k_LxD` its keys, prepared as the kernels prepare them
    (`lsh.prepare_qk`). Computed a block of queries at a time, so memory grows with the
    entries of a block, never as `[L, L]`."""
    q_LxD, k_LxD, exclude_self = lsh.prepare_qk(q_LxD, k_LxD)
    q_LxD, k_LxD = (pad_length(a, _key_length(plan)) for a in (q_LxD, k_LxD))
    n_q, d = len(q_pos_Q), q_LxD.shape[-1]
    if plan.cfg is None:
        per_query = plan.length * 4
    else:
        entries = plan.cfg.n_rounds * plan.cfg.window_chunks * plan.cfg.chunk_len
        per_query = entries * (d + (0 if plan.cfg.allow_duplicate_attention else entries))
    block = max(1, min(n_q, _BLOCK_ELEMENTS // per_query))
    n_blocks = -(-n_q // block)
    pos_BxQ = pad_length(jnp.asarray(q_pos_Q), n_blocks * block).reshape(n_blocks, block)
    fn = functools.partial(_expand_block, plan, q_LxD, k_LxD, exclude_self)
    out = lax.map(fn, pos_BxQ)
    return Pattern(*(a.reshape((-1,) + a.shape[2:])[:n_q] for a in out))


def pattern_output(plan: Plan, pattern: Pattern, v_LxV: jax.Array) -> jax.Array:
    """`[Q, V]`: each query's weights times the values of the keys they fall on (what the
    attention kernel outputs for it)."""
    v_PxV = pad_length(v_LxV.astype(jnp.float32), _key_length(plan))
    if plan.cfg is None:
        return pattern.weights_QxNxE[:, 0] @ v_PxV
    return jnp.einsum("qne,qnev->qv", pattern.weights_QxNxE, v_PxV[pattern.keys_QxNxE])


def window_maps(pattern: Pattern, key_start: int, key_stop: int) -> tuple[jax.Array, jax.Array]:
    """`(weights [Q, K], seen [Q, N, K])` over the keys `key_start .. key_stop - 1`: each
    key's summed weight, and whether round n lets the query see it (`Pattern.visible`)."""
    n_q, n_rounds = pattern.round_weights_QxN.shape
    width = key_stop - key_start
    index = pattern.keys_QxNxE - key_start
    index = jnp.where((index >= 0) & (index < width), index, width)  # outside: dropped
    q_QxNxE = jnp.broadcast_to(jnp.arange(n_q)[:, None, None], index.shape)
    r_QxNxE = jnp.broadcast_to(jnp.arange(n_rounds)[None, :, None], index.shape)
    weights = (
        jnp.zeros((n_q, width), jnp.float32)
        .at[q_QxNxE, index]
        .add(pattern.weights_QxNxE, mode="drop")
    )
    seen = (
        jnp.zeros((n_q, n_rounds, width), bool)
        .at[q_QxNxE, r_QxNxE, index]
        .max(pattern.visible_QxNxE, mode="drop")
    )
    return weights, seen
