"""A slow, obviously-correct reference for LSH and local attention (tests only).

It implements these semantics (those of trax's `LSHSelfAttention` and HuggingFace's
`ReformerAttention`) literally and shares no code with `reformer/attention/lsh.py`:

- per round, the positions sorted by bucket, ties by position, padding after every bucket
  (local attention: one round in the original order); the rounds laid end to end and cut
  into chunks of `chunk_len`;
- a query sees the keys of its own chunk and of the `n_chunks_before` / `n_chunks_after`
  neighbouring chunks, wrapping around (a key in the window twice counts twice);
- masks added to the logits: causal and padding `-1e9`, the query's own position `-1e5`
  (shared QK only), a key of another round or bucket `-1e9` when
  `attend_across_buckets=False`, and `-log N_ij` (how often i sees j over all rounds) when
  `allow_duplicate_attention=False`;
- a softmax per round; the rounds' outputs `o_r` combined by their log-sum-exps `z_r` as
  `sum_r exp(z_r - logsumexp_r z_r) o_r`.

The bookkeeping (sorting, chunking, which keys a query may see, the masks, the duplicate
counts) is plain Python over positions; only the arithmetic is `jnp`, so `jax.grad` gives
reference gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CAUSAL_MASK = -1e9
PADDING_MASK = -1e9
BUCKET_MASK = -1e9
SELF_MASK = -1e5


def _sorted_rounds(
    buckets_NxL: np.ndarray, valid: list[bool], padding_last: bool
) -> list[list[int]]:
    """Per round, positions sorted by bucket then position (padding after everything)."""
    n_rounds, length = buckets_NxL.shape
    rounds = []
    for r in range(n_rounds):

        def key(p, r=r):
            is_padding = padding_last and not valid[p]
            return (is_padding, int(buckets_NxL[r, p]), p)

        rounds.append(sorted(range(length), key=key))
    return rounds


def _visible_keys(rounds: list[list[int]], chunk_len: int, before: int, after: int):
    """For every round r and position i: the list of (key round, key position) that i sees
    in round r (with repeats, if the window wraps onto itself)."""
    slots = [(r, p) for r, order in enumerate(rounds) for p in order]
    chunks = [slots[s : s + chunk_len] for s in range(0, len(slots), chunk_len)]
    visible = {}
    for a, chunk in enumerate(chunks):
        window = []
        for o in range(-before, after + 1):
            window += chunks[(a + o) % len(chunks)]
        for r, i in chunk:
            visible[r, i] = window
    return visible


def reference_attention(
    q,
    k,
    v,
    buckets_NxL: np.ndarray,
    *,
    chunk_len: int,
    n_chunks_before: int,
    n_chunks_after: int,
    causal: bool,
    exclude_self: bool,
    mask: np.ndarray | None,
    attend_across_buckets: bool = True,
    allow_duplicate_attention: bool = True,
    padding_last: bool = True,
):
    """Multi-round chunked attention of prepared queries `q` [L, d] and keys `k` [L, d].

    `buckets_NxL` are the hash buckets of N rounds; `padding_last` sorts padding to the end
    of each round (LSH), local attention keeps the order.
    """
    length = q.shape[0]
    n_rounds = buckets_NxL.shape[0]
    valid = [True] * length if mask is None else [bool(m) for m in np.asarray(mask)]
    pad_bucket = int(np.max(buckets_NxL)) + 1
    bucket = [
        [int(b) if valid[p] else pad_bucket for p, b in enumerate(row)] for row in buckets_NxL
    ]
    visible = _visible_keys(
        _sorted_rounds(np.asarray(buckets_NxL), valid, padding_last),
        chunk_len,
        n_chunks_before,
        n_chunks_after,
    )

    def allowed_by_bucket(r, i, kr, j):
        return attend_across_buckets or (kr == r and bucket[r][j] == bucket[r][i])

    # Duplicate counts: over all rounds, how often i sees j (where the bucket allows it).
    counts = np.zeros((length, length))
    for (r, i), window in visible.items():
        for kr, j in window:
            if allowed_by_bucket(r, i, kr, j):
                counts[i, j] += 1

    n_keys = len(visible[0, 0])
    key_index = np.zeros((n_rounds, length, n_keys), np.int32)
    bias = np.zeros((n_rounds, length, n_keys))
    for (r, i), window in visible.items():
        for s, (kr, j) in enumerate(window):
            key_index[r, i, s] = j
            if causal and j > i:
                bias[r, i, s] += CAUSAL_MASK
            if exclude_self and j == i:
                bias[r, i, s] += SELF_MASK
            if not valid[j]:
                bias[r, i, s] += PADDING_MASK
            if not allowed_by_bucket(r, i, kr, j):
                bias[r, i, s] += BUCKET_MASK
            if not allow_duplicate_attention:
                bias[r, i, s] -= np.log(max(counts[i, j], 1.0))

    logits = jnp.einsum("ld,rlsd->rls", q, k[key_index]) + jnp.asarray(bias, q.dtype)
    lse_round = jax.nn.logsumexp(logits, axis=-1)  # [rounds, L]
    out_round = jnp.einsum("rls,rlsv->rlv", jnp.exp(logits - lse_round[..., None]), v[key_index])
    round_weights = jnp.exp(lse_round - jax.nn.logsumexp(lse_round, axis=0))
    return jnp.sum(round_weights[..., None] * out_round, axis=0)


def reference_unit_keys(qk):
    """trax's `length_normalized(qk) / sqrt(d)`: unit-length keys."""
    d = qk.shape[-1]
    return qk / jnp.sqrt(jnp.mean(qk**2, axis=-1, keepdims=True) + 1e-6) / np.sqrt(d)


def reference_lsh_attention(qk, v, buckets_NxL, *, mask=None, **kwargs):
    """Shared-QK LSH attention: queries `qk`, unit keys, self mask."""
    return reference_attention(
        qk,
        reference_unit_keys(qk),
        v,
        np.asarray(buckets_NxL),
        exclude_self=True,
        mask=mask,
        **kwargs,
    )


def reference_local_attention(q, k, v, *, mask=None, **kwargs):
    """Local attention: one round in which every position shares a bucket (no reordering)."""
    length, d = q.shape
    return reference_attention(
        q / np.sqrt(d),
        k,
        v,
        np.zeros((1, length), np.int32),
        exclude_self=False,
        mask=mask,
        padding_last=False,
        **kwargs,
    )


def reference_full_attention(q, k, v, *, causal, mask=None, shared_qk=False):
    """Full attention by explicit `[L, L]` masks."""
    length, d = q.shape
    if shared_qk:
        k = reference_unit_keys(q)
    else:
        q = q / np.sqrt(d)
    pos = np.arange(length)
    bias = np.zeros((length, length))
    if causal:
        bias += np.where(pos[None, :] > pos[:, None], CAUSAL_MASK, 0.0)
    if shared_qk:
        bias += np.where(pos[None, :] == pos[:, None], SELF_MASK, 0.0)
    if mask is not None:
        bias += np.where(np.asarray(mask)[None, :], 0.0, PADDING_MASK)
    logits = q @ k.T + jnp.asarray(bias, q.dtype)
    probs = jnp.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)) @ v
