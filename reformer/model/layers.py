"""Feed-forward computed in chunks along the sequence, and axial positional embeddings."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


@jax.custom_vjp
def gelu_tanh(x: jax.Array) -> jax.Array:
    """`nn.gelu` (the tanh approximation) with a hand-written backward pass: it keeps only
    `x` and computes the derivative in one elementwise pass, where autodiff keeps several
    `d_ff`-wide intermediates and reads them in several passes."""
    return nn.gelu(x)


def _gelu_tanh_fwd(x):
    return nn.gelu(x), x


def _gelu_tanh_bwd(x, g):
    x32 = x.astype(jnp.float32)
    t = jnp.tanh(_SQRT_2_OVER_PI * (x32 + _GELU_CUBIC * x32 * x32 * x32))
    slope = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * _SQRT_2_OVER_PI * (
        1.0 + 3.0 * _GELU_CUBIC * x32 * x32
    )
    return ((g.astype(jnp.float32) * slope).astype(g.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)

ACTIVATIONS = {
    "gelu": gelu_tanh,  # tanh approximation
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "relu": nn.relu,
}


def feed_forward(
    params: dict, x_BxLxD: jax.Array, dtype=jnp.float32, activation: str = "gelu"
) -> jax.Array:
    """Dense -> activation -> Dense on every position (no dropout: it sits outside the
    block), float32 out. `activation` is a key of `ACTIVATIONS` (`model.ff_activation`);
    `dtype` is that of the products' operands."""
    h_BxLxF = matmul(x_BxLxD, params["wi"]["kernel"], dtype) + params["wi"]["bias"]
    h_BxLxF = ACTIVATIONS[activation](h_BxLxF)
    return matmul(h_BxLxF, params["wo"]["kernel"], dtype) + params["wo"]["bias"]


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


def dropout(x: jax.Array, rate: float, key: jax.Array | None, index: jax.Array) -> jax.Array:
    """Inverted dropout of one chunk `x` (the mask drawn from `key` folded with the chunk's
    `index`, so a rematerialized chunk draws the same mask); identity if `key` is None."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(jax.random.fold_in(key, index), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def chunked_feed_forward(
    params: dict, x_BxLxD: jax.Array, chunk_size: int, dtype=jnp.float32, activation: str = "gelu"
) -> jax.Array:
    """`feed_forward` over `chunk_size` positions at a time, forward and backward
    (`sequence_map`): only one chunk's `d_ff`-wide activations are alive at once."""
    return sequence_map(
        lambda _, x: feed_forward(params, x, dtype, activation), (x_BxLxD,), chunk_size
    )


def _declare_feed_forward(module: nn.Module, d_model: int, d_ff: int) -> dict:
    """The feed-forward parameters of `module`, in the layout `feed_forward` reads."""
    dense_init = nn.initializers.lecun_normal()
    return {
        "wi": {
            "kernel": module.param("wi_kernel", dense_init, (d_model, d_ff)),
            "bias": module.param("wi_bias", nn.initializers.zeros, (d_ff,)),
        },
        "wo": {
            "kernel": module.param("wo_kernel", dense_init, (d_ff, d_model)),
            "bias": module.param("wo_bias", nn.initializers.zeros, (d_model,)),
        },
    }


class FeedForwardWeights(nn.Module):
    """Declares the parameters of `ChunkedFeedForward` (same names) and returns them, for a
    caller that runs `feed_forward` itself (inside `sequence_map`)."""

    d_ff: int

    @nn.compact
    def __call__(self, d_model: int) -> dict:
        return _declare_feed_forward(self, d_model, self.d_ff)


class LayerNormWeights(nn.Module):
    """Declares the parameters of `nn.LayerNorm` (scale, bias) and returns them; apply them
    with `layer_norm`."""

    @nn.compact
    def __call__(self, d_model: int) -> dict:
        return {
            "scale": self.param("scale", nn.initializers.ones, (d_model,)),
            "bias": self.param("bias", nn.initializers.zeros, (d_model,)),
        }


def layer_norm(params: dict, x: jax.Array, epsilon: float, dtype=jnp.float32) -> jax.Array:
    """LayerNorm over the last axis with explicit parameters (`nn.LayerNorm`'s parameters and
    function up to rounding: float32 statistics, the variance as the mean of squared
    deviations, result in `dtype`) with a hand-written backward pass.

    Autodiff of `nn.LayerNorm` builds its reductions as `reduce(a * b)` fusions, which
    XLA:CPU runs many times slower than the equivalent contraction; here the same sums are
    written as `einsum`s."""
    return _layer_norm(x, params["scale"], params["bias"], float(epsilon), jnp.dtype(dtype))


def _layer_norm_stats(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Float32 mean and `rsqrt(var + epsilon)` over the last axis, as `nn.LayerNorm`."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return mean, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _layer_norm(x, scale, bias, epsilon, dtype):
    mean, inv = _layer_norm_stats(x, epsilon)
    return ((x.astype(jnp.float32) - mean) * (inv * scale) + bias).astype(dtype)


def _layer_norm_fwd(x, scale, bias, epsilon, dtype):
    mean, inv = _layer_norm_stats(x, epsilon)
    y = ((x.astype(jnp.float32) - mean) * (inv * scale) + bias).astype(dtype)
    return y, (x, scale, mean, inv)


def _layer_norm_bwd(epsilon, dtype, residuals, dy):
    x, scale, mean, inv = residuals
    dy = dy.astype(jnp.float32)
    x_hat = (x.astype(jnp.float32) - mean) * inv
    d_scale = jnp.einsum("...d,...d->d", dy, x_hat)
    d_bias = jnp.sum(dy.reshape(-1, dy.shape[-1]), axis=0)
    g = dy * scale
    g_mean = jnp.mean(g, axis=-1, keepdims=True)
    g_x_hat_mean = jnp.einsum("...d,...d->...", g, x_hat)[..., None] / x.shape[-1]
    dx = inv * (g - g_mean - x_hat * g_x_hat_mean)
    return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class ChunkedFeedForward(nn.Module):
    """Position-wise feed-forward layer whose `d_ff`-wide activations live one chunk at a time."""

    d_ff: int
    chunk_size: int = 0
    dtype: jnp.dtype = jnp.float32
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        params = _declare_feed_forward(self, x_BxLxD.shape[-1], self.d_ff)
        return chunked_feed_forward(params, x_BxLxD, self.chunk_size, self.dtype, self.activation)


class AxialPositionalEmbedding(nn.Module):
    """Axial positions (Reformer, trax `AxialPositionalEncoding`).

    Position `i` of a `shape = (a, b)` grid (`a * b` >= the longest sequence) is
    `concat(E1[i // b], E2[i % b])` with `E1` `[a, dims[0]]` and `E2` `[b, dims[1]]`: two small
    tables instead of one `[a * b, d_model]` table. A shorter sequence takes the leading
    positions. Only the `L` rows in use are built.
    """

    shape: tuple[int, int]
    dims: tuple[int, int]

    @nn.compact
    def __call__(self, length: int, start=None) -> jax.Array:
        """Rows `[0, length)`; or, given `start` (decoding), rows `start + [0, length)`."""
        (a, b), (d1, d2) = self.shape, self.dims
        if length > a * b:
            raise ValueError(
                f"sequence length {length} exceeds the axial grid "
                f"{a} x {b} = {a * b} (model.axial_shape)"
            )
        init = nn.initializers.normal(1.0)
        e1_AxD1 = self.param("axial_0", init, (a, d1))
        e2_BxD2 = self.param("axial_1", init, (b, d2))
        if start is not None:
            pos_L = start + jnp.arange(length)
            return jnp.concatenate([e1_AxD1[pos_L // b], e2_BxD2[pos_L % b]], axis=-1)
        # The rows in use as a broadcast of the two tables (no gather: the gradient is a sum
        # over the grid's other axis, not a scatter of [L, d] rows).
        rows = -(-length // b)
        grid_RxBxD = jnp.concatenate(
            [
                jnp.broadcast_to(e1_AxD1[:rows, None, :], (rows, b, d1)),
                jnp.broadcast_to(e2_BxD2[None, :, :], (rows, b, d2)),
            ],
            axis=-1,
        )
        return grid_RxBxD.reshape(rows * b, d1 + d2)[:length]
