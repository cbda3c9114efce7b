"""Angular LSH: the buckets of vectors under random rotations (one head, no batch axes).

`hash_vectors` computes `argmax(concat([x R, -x R]))` per round, as trax and HuggingFace do;
with factorized bucket counts (`model.bucket_factors`) each slice of the rotation columns
is hashed on its own and the buckets combined (`buckets_from_rotated`). `lsh.py`
sorts by these buckets; cached decoding (`decoding/sampling.py`) hashes one query at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_HASH_BLOCK_ELEMENTS = 1 << 18  # rotated values alive at once while hashing


def default_n_buckets(length: int, chunk_len: int) -> int:
    """trax's automatic bucket count: two buckets per chunk (always even, at least 2)."""
    return 2 * max(1, round_up(length, chunk_len) // chunk_len)


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def pad_length(x: jax.Array | None, padded: int, axis: int = 0) -> jax.Array | None:
    """Zero-pads `x` along `axis` to length `padded`."""
    if x is None or x.shape[axis] == padded:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, padded - x.shape[axis])
    return jnp.pad(x, widths)


def rotation_width(n_buckets: int, factors: tuple[int, ...] | None = None) -> int:
    """Columns R of the rotations per round: n_buckets / 2, or sum(factors) / 2."""
    return sum(factors) // 2 if factors else n_buckets // 2


def buckets_from_rotated(rotated_XxR: jax.Array, factors: tuple[int, ...] | None = None):
    """Buckets (int32) of rotated vectors `[..., R]`: `argmax(concat([r, -r]))`, or with
    `factors` (f_1, f_2, ...) the factorized hash of trax and HF: the columns are cut into
    slices of f_i / 2, each slice hashed into f_i buckets, and the bucket is
    b_1 + f_1 * (b_2 + f_2 * (b_3 + ...)), in `[0, prod(factors))`."""

    def angular(r):
        # argmax(concat([r, -r])) without the concatenation, first occurrence as argmax: the
        # largest |r| is m; entry i of the first half scores i where r_i = m, of the second
        # half width + i where r_i = -m, and the bucket is the lowest score. Two plain
        # reductions: several times faster on XLA:CPU than argmax's (value, index) reduction.
        width = r.shape[-1]
        top = jnp.max(jnp.abs(r), axis=-1, keepdims=True)
        index = jnp.arange(width, dtype=jnp.int32)
        score = jnp.where(r == top, index, jnp.where(r == -top, width + index, 2 * width))
        return jnp.min(score, axis=-1)

    if not factors or len(factors) == 1:
        return angular(rotated_XxR)
    buckets, start, scale = None, 0, 1
    for f in factors:
        b = angular(rotated_XxR[..., start : start + f // 2])
        buckets = b if buckets is None else buckets + scale * b
        start, scale = start + f // 2, scale * f
    return buckets


def hash_vectors(
    x_LxD: jax.Array, rotations_DxNxR: jax.Array, factors: tuple[int, ...] | None = None
) -> jax.Array:
    """Angular LSH: `argmax(concat([x R, -x R]))` for each of the N rounds.

    `rotations_DxNxR` holds random Gaussian rotations, R = n_buckets // 2 (or sum(factors)
    // 2 with factorized buckets, `buckets_from_rotated`). Returns int32 buckets of shape
    `[N, L]` with values in `[0, n_buckets)`. Positions are hashed in blocks: with automatic
    bucket counts R grows with L, and the rotated vectors of the whole sequence (`[N, L, 2R]`)
    would grow as L^2.
    """
    length, d = x_LxD.shape
    n_rounds, half = rotations_DxNxR.shape[1:]
    rotations_DxM = rotations_DxNxR.astype(jnp.float32).reshape(d, n_rounds * half)
    block = max(1, min(length, _HASH_BLOCK_ELEMENTS // (n_rounds * half)))
    padded = round_up(length, block)
    x_TxBxD = pad_length(lax.stop_gradient(x_LxD).astype(jnp.float32), padded)
    x_TxBxD = x_TxBxD.reshape(padded // block, block, d)

    def hash_block(x_BxD: jax.Array) -> jax.Array:
        rotated_BxNxR = (x_BxD @ rotations_DxM).reshape(block, n_rounds, half)
        return buckets_from_rotated(rotated_BxNxR, factors)

    buckets_TxBxN = lax.map(hash_block, x_TxBxD)
    return buckets_TxBxN.reshape(padded, n_rounds)[:length].T
