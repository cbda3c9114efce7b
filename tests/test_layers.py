"""Chunked feed-forward and axial positional embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from reformer.attention.primitives import matmul
from reformer.model.layers import (
    AxialPositionalEmbedding,
    ChunkedFeedForward,
    gelu_tanh,
    layer_norm,
)


@pytest.mark.parametrize("chunk_size, length", [(4, 16), (5, 16), (16, 16), (64, 16)])
def test_chunked_feed_forward_equals_unchunked(chunk_size, length):
    x = jax.random.normal(jax.random.key(0), (2, length, 8))
    params = ChunkedFeedForward(32).init(jax.random.key(1), x)["params"]
    whole = lambda p, x: ChunkedFeedForward(32, 0).apply({"params": p}, x)  # noqa: E731
    chunked = lambda p, x: ChunkedFeedForward(32, chunk_size).apply({"params": p}, x)  # noqa: E731
    np.testing.assert_allclose(chunked(params, x), whole(params, x), rtol=1e-5, atol=1e-6)
    loss = lambda fn: lambda p, x: jnp.sum(jnp.sin(fn(p, x)))  # noqa: E731
    g_whole = jax.grad(loss(whole), argnums=(0, 1))(params, x)
    g_chunked = jax.grad(loss(chunked), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_chunked), jax.tree.leaves(g_whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_feed_forward_keeps_one_chunk_of_d_ff_alive():
    """XLA's temp memory of forward+backward: the d_ff-wide activations of one chunk, not
    of the whole sequence."""
    length, d_model, d_ff = 2048, 16, 1024
    x = jnp.zeros((1, length, d_model))
    params = ChunkedFeedForward(d_ff).init(jax.random.key(0), x)["params"]

    def temp_bytes(chunk):
        f = lambda p, x: jnp.sum(ChunkedFeedForward(d_ff, chunk).apply({"params": p}, x))  # noqa: E731
        compiled = jax.jit(jax.grad(f)).lower(params, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    activations = length * d_ff * 4  # One float32 [L, d_ff] array.
    whole, chunked = temp_bytes(0), temp_bytes(128)  # 128 positions = 1/16 of the sequence.
    assert whole >= activations
    assert chunked < activations / 2
    assert chunked < whole / 8


def test_axial_positions_shape_and_slicing():
    module = AxialPositionalEmbedding(shape=(4, 8), dims=(3, 5))
    params = module.init(jax.random.key(0), 32)["params"]
    full = module.apply({"params": params}, 32)
    assert full.shape == (32, 8)
    e1, e2 = params["axial_0"], params["axial_1"]
    assert e1.shape == (4, 3) and e2.shape == (8, 5)
    for i in (0, 7, 8, 13, 31):
        np.testing.assert_array_equal(full[i], np.concatenate([e1[i // 8], e2[i % 8]]))
    # A shorter sequence takes the leading positions.
    np.testing.assert_array_equal(module.apply({"params": params}, 11), full[:11])
    with pytest.raises(ValueError, match="exceeds the axial grid"):
        module.apply({"params": params}, 33)


@pytest.mark.parametrize("chunk_size", [4, 5, 16])
def test_sequence_map_joins_sums_and_looks_back(chunk_size):
    """Chunks joined along their axes, per-chunk results summed (`out_axis=None`), and a
    look-back of earlier positions: equal to the whole-sequence computation, with gradients."""
    from reformer.attention.primitives import sequence_map

    x = jax.random.normal(jax.random.key(0), (2, 16, 3))
    w = jax.random.normal(jax.random.key(1), (3, 4))

    def heads_first(x):  # [B, L, D] -> [B, 4, L]
        return jnp.swapaxes(jnp.tanh(x @ w), 1, 2)

    whole = heads_first(x)
    # Products over different numbers of rows may round differently (a few float32 ulps).
    chunked = sequence_map(lambda _, c: heads_first(c), (x,), chunk_size, out_axis=2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    total = sequence_map(lambda _, c: jnp.sum(c**2), (x,), chunk_size, out_axis=None)
    np.testing.assert_allclose(total, jnp.sum(x**2), rtol=1e-5)

    # A causal difference with the previous position: needs a look-back of 1.
    def diff_whole(x):
        return x - jnp.pad(x, ((0, 0), (1, 0), (0, 0)))[:, :-1]

    def diff_chunked(x):
        def chunk(index, c):  # c: 1 + chunk_size positions; the first chunk's look-back is 0
            before = jnp.where(index > 0, c[:, :1], 0.0)
            return c[:, 1:] - jnp.concatenate([before, c[:, 1:-1]], axis=1)

        return sequence_map(chunk, (x,), chunk_size, look_back=1)

    if chunk_size < 16:
        np.testing.assert_allclose(diff_chunked(x), diff_whole(x), rtol=1e-6)
        g = jax.grad(lambda x: jnp.sum(jnp.sin(diff_chunked(x))))(x)
        np.testing.assert_allclose(
            g, jax.grad(lambda x: jnp.sum(jnp.sin(diff_whole(x))))(x), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_equals_flax_in_value_and_gradient(dtype):
    """The hand-written backward pass of `layer_norm` is the gradient of `nn.LayerNorm`."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    x = 3.0 * jax.random.normal(k1, (2, 37, 48)) + 1.5
    cot = jax.random.normal(k2, (2, 37, 48))
    params = {
        "scale": 1.0 + 0.3 * jax.random.normal(k3, (48,)),
        "bias": 0.1 * jax.random.normal(k4, (48,)),
    }

    def flax_ln(p, x):
        return nn.LayerNorm(1e-6, dtype=dtype).apply({"params": p}, x)

    def ours(p, x):
        return layer_norm(p, x, 1e-6, dtype)

    y_ref, y = flax_ln(params, x), ours(params, x)
    assert y.dtype == y_ref.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), atol=1e-5)

    def loss(f):
        return lambda p, x: jnp.sum(f(p, x).astype(jnp.float32) * cot)

    g_ref = jax.grad(loss(flax_ln), argnums=(0, 1))(params, x)
    g = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_layer_norm_variance_is_exact_for_rows_far_from_zero():
    """The variance is the mean of squared deviations, not E[x^2] - mean^2, which cancels
    catastrophically for rows whose mean is large against their spread."""
    x = 300.0 + 0.05 * jax.random.normal(jax.random.key(0), (4, 64))
    params = {"scale": jnp.ones(64), "bias": jnp.zeros(64)}
    y = layer_norm(params, x, 1e-6)
    x64 = np.asarray(x, np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(y), ref, atol=5e-3)
    # The one-pass formula in float32 has lost the variance here.
    one_pass = jnp.mean(x * x, -1) - jnp.mean(x, -1) ** 2
    assert float(jnp.max(jnp.abs(one_pass / x64.var(-1) - 1))) > 0.1


def _bf16(a):
    return np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)


def test_mixed_precision_matmul_rounds_operands_not_gradients():
    """In bfloat16, `matmul` multiplies bfloat16 operands with float32 accumulation, and its
    backward pass multiplies the rounded cotangent by the rounded operands, returning float32
    gradients that are not rounded again (autodiff of cast-then-multiply rounds them)."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (2, 5, 3, 4))
    w = jax.random.normal(k2, (3, 4, 6))
    g = jax.random.normal(k3, (2, 5, 6))
    y, vjp = jax.vjp(lambda x, w: matmul(x, w, jnp.bfloat16, n_contract=2), x, w)
    dx, dw = vjp(g)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    xr, wr, gr = _bf16(x).reshape(10, 12), _bf16(w).reshape(12, 6), _bf16(g).reshape(10, 6)
    np.testing.assert_allclose(np.asarray(y).reshape(10, 6), xr @ wr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx).reshape(10, 12), gr @ wr.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw).reshape(12, 6), xr.T @ gr, rtol=1e-5, atol=1e-5)
    # Not on the bfloat16 grid: the gradients kept their float32 bits.
    assert np.mean(_bf16(dw) != np.asarray(dw, np.float64)) > 0.5
    # float32: the plain product and its autodiff gradient.
    y32, vjp32 = jax.vjp(lambda x, w: matmul(x, w, jnp.float32, n_contract=2), x, w)
    np.testing.assert_allclose(y32, jnp.einsum("bthk,hkn->btn", x, w), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="contracted axes"):
        matmul(x, w.reshape(4, 3, 6), jnp.float32, n_contract=2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gelu_equals_flax_in_value_and_gradient(dtype):
    """The hand-written backward pass of the tanh GELU against autodiff of `nn.gelu`, over
    the range where the slope changes (and its tails, where it is 0 or 1)."""
    x = jnp.linspace(-12.0, 12.0, 4001).astype(dtype)
    g = jax.random.normal(jax.random.key(0), x.shape).astype(dtype)
    y, vjp = jax.vjp(gelu_tanh, x)
    y_ref, vjp_ref = jax.vjp(nn.gelu, x)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    (dx,), (dx_ref,) = vjp(g), vjp_ref(g)
    assert dx.dtype == dtype
    if dtype == jnp.float32:
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    else:  # autodiff rounds its intermediates to bfloat16; ours computes in float32
        exact = jax.vjp(nn.gelu, x.astype(jnp.float32))[1](g.astype(jnp.float32))[0]
        np.testing.assert_allclose(np.asarray(dx, np.float32), exact, rtol=1e-2, atol=1e-2)
    slope = jax.vmap(jax.grad(lambda v: gelu_tanh(v)))(x.astype(jnp.float32))
    assert abs(float(slope[0])) < 1e-6 and abs(float(slope[-1]) - 1.0) < 1e-6
