"""The primitives the attention modules and the model's layers share: `matmul` (products in
a chosen dtype with float32 results, mixed precision in the backward pass too) and
`sequence_map` (position-wise work in rematerialized chunks along the sequence). They import
nothing of the package, so attention does not depend on the model."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def matmul(x: jax.Array, w: jax.Array, dtype=jnp.float32, n_contract: int = 1) -> jax.Array:
    """`x[..., K1..Kc] @ w[K1..Kc, N...]` (the last `n_contract` axes of `x` against the first
    of `w`), float32 result, the operands multiplied in `dtype`.

    In bfloat16 the backward pass is mixed precision as well: its products take bfloat16
    operands (the rounded cotangent and the saved rounded operands) and return float32, so
    neither the weight gradient nor the input gradient is rounded to bfloat16 (autodiff of
    a cast-then-multiply rounds both, and sums the input gradients of several products in
    bfloat16). The elementwise work around a product stays float32: values are rounded only
    where a product reads them."""
    k_shape, n_shape = w.shape[:n_contract], w.shape[n_contract:]
    if x.shape[x.ndim - n_contract :] != k_shape:
        raise ValueError(f"matmul: x {x.shape} and w {w.shape} differ in the contracted axes")
    k, n = math.prod(k_shape), math.prod(n_shape)
    y = _matmul_2d(x.reshape(-1, k), w.reshape(k, n), jnp.dtype(dtype))
    return y.reshape(x.shape[: x.ndim - n_contract] + n_shape)


def _dot(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _matmul_2d(x_MxK, w_KxN, dtype):
    if dtype == jnp.float32:  # plain autodiff: no casts to undo
        return _dot(x_MxK.astype(dtype), w_KxN.astype(dtype))
    return _mixed_matmul_2d(x_MxK, w_KxN, dtype, x_MxK.dtype, w_KxN.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _mixed_matmul_2d(x_MxK, w_KxN, dtype, x_dtype, w_dtype):
    return _dot(x_MxK.astype(dtype), w_KxN.astype(dtype))


def _mixed_matmul_2d_fwd(x_MxK, w_KxN, dtype, x_dtype, w_dtype):
    x, w = x_MxK.astype(dtype), w_KxN.astype(dtype)
    return _dot(x, w), (x, w)


def _mixed_matmul_2d_bwd(dtype, x_dtype, w_dtype, residuals, g_MxN):
    x, w = residuals
    g = g_MxN.astype(dtype)
    return _dot(g, w.T).astype(x_dtype), _dot(x.T, g).astype(w_dtype)


_mixed_matmul_2d.defvjp(_mixed_matmul_2d_fwd, _mixed_matmul_2d_bwd)


def sequence_map(
    fn: Callable[..., Any],
    arrays: tuple[jax.Array, ...],
    chunk_size: int,
    *,
    in_axis: int = 1,
    out_axis: int | None = 1,
    look_back: int = 0,
) -> Any:
    """`fn(index, *chunks)` over chunks of `chunk_size` positions, one chunk at a time.

    `arrays` share their sequence axis `in_axis` (length L); `fn` gets chunk `index` of each
    and returns arrays (or a tuple of them) with the chunk's positions on `out_axis`, which
    are joined into sequences of L (`out_axis=None`: summed over the chunks instead, e.g.
    per-chunk loss sums; padded positions are zeros). `fn` must be position-wise; it gets the
    index to draw per-chunk random numbers. With `look_back` > 0, each input chunk starts
    with the `look_back` positions before it (`fn` gets `look_back + chunk_size` positions
    and returns results for the last `chunk_size`); the first chunk's look-back holds the
    array's first positions, which `fn` must mask (it knows the chunk by its index).

    Chunks run one after another in a loop that reads each chunk from the whole input and
    writes its result into the whole output in place (no chunk-major copies of either), and
    each chunk is rematerialized in the backward pass: only the inputs are kept for it, and
    one chunk's intermediates (LayerNorm output, projections, `d_ff`-wide activations, dropout
    masks) are alive at a time. L is padded to a multiple of `chunk_size`; `chunk_size <= 0`
    or `>= L` calls `fn(0, *arrays)` once, without rematerialization.
    """
    length = arrays[0].shape[in_axis]
    if chunk_size <= 0 or chunk_size >= length:
        if look_back:
            raise ValueError("look_back needs chunks shorter than the sequence")
        return fn(jnp.int32(0), *arrays)
    if look_back > chunk_size:
        raise ValueError(f"look_back {look_back} exceeds the chunk size {chunk_size}")
    n_chunks = -(-length // chunk_size)
    pad = n_chunks * chunk_size - length
    if pad:
        arrays = tuple(_pad_axis(a, in_axis, pad) for a in arrays)

    @jax.checkpoint
    def one_chunk(index, arrays):
        start = index * chunk_size
        chunks = [jax.lax.dynamic_slice_in_dim(a, start, chunk_size, in_axis) for a in arrays]
        if look_back:
            before = jnp.maximum(start - look_back, 0)
            chunks = [
                jnp.concatenate(
                    [jax.lax.dynamic_slice_in_dim(a, before, look_back, in_axis), c], in_axis
                )
                for a, c in zip(arrays, chunks, strict=True)
            ]
        return fn(index, *chunks)

    out_shapes = jax.eval_shape(one_chunk, jnp.int32(0), arrays)
    if out_axis is None:

        def step(total, index):
            return jax.tree.map(jnp.add, total, one_chunk(index, arrays)), None

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shapes)
        return jax.lax.scan(step, zeros, jnp.arange(n_chunks, dtype=jnp.int32))[0]

    def step(out, index):
        updates = one_chunk(index, arrays)
        start = index * chunk_size
        return jax.tree.map(
            lambda o, u: jax.lax.dynamic_update_slice_in_dim(o, u, start, out_axis), out, updates
        ), None

    def whole(s):
        shape = list(s.shape)
        shape[out_axis] = n_chunks * chunk_size
        return jnp.zeros(shape, s.dtype)

    out = jax.lax.scan(
        step, jax.tree.map(whole, out_shapes), jnp.arange(n_chunks, dtype=jnp.int32)
    )[0]
    if pad:
        out = jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, length, axis=out_axis), out)
    return out


def _pad_axis(a: jax.Array, axis: int, pad: int) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, pad)
    return jnp.pad(a, widths)
