"""Feed-forward computed in chunks along the sequence, and axial positional embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

ACTIVATIONS = {
    "gelu": nn.gelu,  # tanh approximation
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "relu": nn.relu,
}


def feed_forward(
    params: dict, x_BxLxD: jax.Array, dtype=jnp.float32, activation: str = "gelu"
) -> jax.Array:
    """Dense -> activation -> Dense on every position (no dropout: it sits outside the
    block), float32 out. `activation` is a key of `ACTIVATIONS` (`model.ff_activation`);
    `dtype` is that of the products' operands."""
    h_BxLxF = _matmul(x_BxLxD, params["wi"]["kernel"], dtype) + params["wi"]["bias"]
    h_BxLxF = ACTIVATIONS[activation](h_BxLxF)
    return _matmul(h_BxLxF, params["wo"]["kernel"], dtype) + params["wo"]["bias"]


def _matmul(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """`x @ w` with operands in `dtype` (bfloat16 in mixed precision), float32 result: the
    elementwise work around it stays float32, rounded only where a product reads it."""
    return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def chunked_feed_forward(
    params: dict, x_BxLxD: jax.Array, chunk_size: int, dtype=jnp.float32, activation: str = "gelu"
) -> jax.Array:
    """`feed_forward` over `chunk_size` positions at a time, forward and backward.

    Chunks run one after another (`lax.map`) and each is rematerialized in the backward pass,
    so only one chunk's `d_ff`-wide activations are alive at once. The sequence is padded to
    a multiple of `chunk_size`; `chunk_size <= 0` or `>= L` computes it in one piece.
    """
    batch, length, d_model = x_BxLxD.shape
    if chunk_size <= 0 or chunk_size >= length:
        return feed_forward(params, x_BxLxD, dtype, activation)
    n_chunks = -(-length // chunk_size)
    pad = n_chunks * chunk_size - length
    x_padded = jnp.pad(x_BxLxD, ((0, 0), (0, pad), (0, 0)))
    x_NxBxCxD = x_padded.reshape(batch, n_chunks, chunk_size, d_model).swapaxes(0, 1)
    one_chunk = jax.checkpoint(lambda x: feed_forward(params, x, dtype, activation))
    y_NxBxCxD = jax.lax.map(one_chunk, x_NxBxCxD)
    y_BxLxD = y_NxBxCxD.swapaxes(0, 1).reshape(batch, n_chunks * chunk_size, -1)
    return y_BxLxD[:, :length]


class ChunkedFeedForward(nn.Module):
    """Position-wise feed-forward layer whose `d_ff`-wide activations live one chunk at a time."""

    d_ff: int
    chunk_size: int = 0
    dtype: jnp.dtype = jnp.float32
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        d_model = x_BxLxD.shape[-1]
        dense_init = nn.initializers.lecun_normal()
        params = {
            "wi": {
                "kernel": self.param("wi_kernel", dense_init, (d_model, self.d_ff)),
                "bias": self.param("wi_bias", nn.initializers.zeros, (self.d_ff,)),
            },
            "wo": {
                "kernel": self.param("wo_kernel", dense_init, (self.d_ff, d_model)),
                "bias": self.param("wo_bias", nn.initializers.zeros, (d_model,)),
            },
        }
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
    def __call__(self, length: int) -> jax.Array:
        (a, b), (d1, d2) = self.shape, self.dims
        if length > a * b:
            raise ValueError(
                f"sequence length {length} exceeds the axial grid "
                f"{a} x {b} = {a * b} (model.axial_shape)"
            )
        init = nn.initializers.normal(1.0)
        e1_AxD1 = self.param("axial_0", init, (a, d1))
        e2_BxD2 = self.param("axial_1", init, (b, d2))
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
