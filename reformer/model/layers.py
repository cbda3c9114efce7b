"""The model's layers: feed-forward (tanh GELU with its own gradient, computed in chunks
along the sequence), dropout drawn per chunk, LayerNorm with float32 statistics, and axial
positional embeddings."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from reformer.attention.primitives import matmul, sequence_map

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


def _axial_rows_at(tables: list[jax.Array], shape: tuple[int, ...], pos_L: jax.Array):
    """Rows of positions `pos_L`: each table gathered at its digit of the positions."""
    rows = []
    for k, table in enumerate(tables):
        stride = math.prod(shape[k + 1 :])  # Positions per step of axis k.
        digit_L = pos_L // stride if stride > 1 else pos_L
        rows.append(table[digit_L % shape[k] if k > 0 else digit_L])
    return jnp.concatenate(rows, axis=-1)


def _axial_leading_rows(tables: list[jax.Array], shape: tuple[int, ...], length: int):
    """Rows `[0, length)` as a broadcast of the tables over the leading part of the grid (no
    gather: each table's gradient is a sum over the grid's other axes, not a scatter of
    `[L, d]` rows). Only the rows of the first axis that the sequence reaches are built."""
    lead = -(-length // math.prod(shape[1:]))
    grid = (lead, *shape[1:])
    parts = []
    for k, table in enumerate(tables):
        index = tuple(slice(None) if j == k else None for j in range(len(shape)))
        used = table[:lead] if k == 0 else table
        parts.append(jnp.broadcast_to(used[index], (*grid, table.shape[-1])))
    width = sum(t.shape[-1] for t in tables)
    return jnp.concatenate(parts, axis=-1).reshape(math.prod(grid), width)[:length]


class AxialPositionalEmbedding(nn.Module):
    """Axial positions (Reformer; trax `AxialPositionalEncoding` with `d_embs`, HuggingFace
    `AxialPositionEmbeddings`), over any number of axes.

    Position `i` of a `shape = (s_0, ..., s_{n-1})` grid (its product >= the longest
    sequence), whose mixed-radix digits are `(i_0, ..., i_{n-1})` (row-major: the last axis
    varies fastest), is `concat(E_0[i_0], ..., E_{n-1}[i_{n-1}])` with `E_k` the parameter
    `axial_k` of shape `[s_k, dims[k]]`: n small tables instead of one `[prod(shape), d_model]`
    table. A shorter sequence takes the leading positions.
    """

    shape: tuple[int, ...]
    dims: tuple[int, ...]

    @nn.compact
    def __call__(self, length: int, start=None) -> jax.Array:
        """Rows `[0, length)`; or, given `start` (decoding), rows `start + [0, length)`."""
        shape, dims = tuple(self.shape), tuple(self.dims)
        if len(shape) != len(dims) or not shape:
            raise ValueError(
                f"axial positions need one width per axis: model.axial_shape={shape}, "
                f"model.axial_dims={dims}"
            )
        if length > math.prod(shape):
            raise ValueError(
                f"sequence length {length} exceeds the axial grid "
                f"{' x '.join(map(str, shape))} = {math.prod(shape)} (model.axial_shape)"
            )
        init = nn.initializers.normal(1.0)
        tables = [
            self.param(f"axial_{k}", init, (s, d))
            for k, (s, d) in enumerate(zip(shape, dims, strict=True))
        ]
        if start is not None:
            return _axial_rows_at(tables, shape, start + jnp.arange(length))
        return _axial_leading_rows(tables, shape, length)
