"""The attention modules (reformer/attention/self_attention.py): parameters, the shared call
signature, rng streams, apply-time options, masks, causality and dtypes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from reformer.attention import caches
from reformer.attention.self_attention import (
    FullSelfAttention,
    LocalSelfAttention,
    LSHSelfAttention,
)

BATCH, LENGTH, D_MODEL, N_HEADS, D_HEAD, CHUNK = 2, 32, 16, 2, 8, 8


@pytest.fixture(scope="module")
def x_BxLxD():
    return jax.random.normal(jax.random.key(0), (BATCH, LENGTH, D_MODEL))


@pytest.fixture(scope="module")
def mask_BxL():
    return jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [LENGTH - 7]])


MODULES = {
    "full": FullSelfAttention(N_HEADS, D_HEAD, causal=False),
    "full_shared_qk": FullSelfAttention(N_HEADS, D_HEAD, causal=False, shared_qk=True),
    "local": LocalSelfAttention(N_HEADS, D_HEAD, chunk_len=CHUNK, causal=False),
    "lsh": LSHSelfAttention(N_HEADS, D_HEAD, chunk_len=CHUNK, n_hashes=2, causal=False),
}
PARAM_NAMES = {
    "full": {"query", "key", "value", "out"},
    "full_shared_qk": {"query_key", "value", "out"},
    "local": {"query", "key", "value", "out"},
    "lsh": {"query_key", "value", "out"},
}


@functools.cache
def _params(name: str):
    x = jnp.zeros((BATCH, LENGTH, D_MODEL))
    return MODULES[name].init(jax.random.key(1), x)


@functools.cache
def _apply(module: nn.Module, **static):
    """jit(module.apply) with static keyword arguments (cached per module and options)."""
    return jax.jit(functools.partial(module.apply, **static))


@pytest.mark.parametrize("name", MODULES)
def test_parameters_and_call_signature(name, x_BxLxD, mask_BxL):
    params = _params(name)
    assert set(params["params"]) == PARAM_NAMES[name]
    assert params["params"]["value"]["kernel"].shape == (D_MODEL, N_HEADS, D_HEAD)
    assert all("bias" not in p for p in params["params"].values())
    y, aux = _apply(MODULES[name])(params, x_BxLxD, mask_BxL)
    assert y.shape == x_BxLxD.shape
    if name == "lsh":
        assert aux.shape == (BATCH, N_HEADS, 2, LENGTH) and aux.dtype == jnp.int32
    else:
        assert aux is None
        # the LSH-only keywords are accepted and ignored
        y_kw, _ = MODULES[name].apply(params, x_BxLxD, mask_BxL, n_hashes=8, buckets=None)
        np.testing.assert_allclose(y_kw, y, atol=1e-6)


@pytest.mark.parametrize("name", MODULES)
def test_padding_does_not_leak_into_real_tokens(name, x_BxLxD, mask_BxL):
    """Changing padded tokens leaves the outputs at real positions unchanged."""
    noise = jax.random.normal(jax.random.key(9), x_BxLxD.shape)
    x_other = jnp.where(mask_BxL[:, :, None], x_BxLxD, noise)
    apply = _apply(MODULES[name])
    y, _ = apply(_params(name), x_BxLxD, mask_BxL)
    y_other, _ = apply(_params(name), x_other, mask_BxL)
    np.testing.assert_allclose(y_other[mask_BxL], y[mask_BxL], atol=1e-5)


@pytest.mark.parametrize("name", ["full", "full_shared_qk", "local", "lsh"])
def test_causal_modules_do_not_see_the_future(name, x_BxLxD):
    module = MODULES[name].clone(causal=True)
    params = _params(name)
    x_LxD = x_BxLxD[0]
    y_of_x = lambda x: module.apply(params, x[None])[0][0]  # noqa: E731
    influence = np.abs(np.asarray(jax.jacrev(y_of_x)(x_LxD))).sum(axis=(1, 3))  # [t, s]
    future = np.arange(LENGTH)[None, :] > np.arange(LENGTH)[:, None]
    assert np.all(influence[future] == 0.0)
    assert np.all(influence.sum(axis=1) > 0.0)


def test_full_shared_qk_evaluates_an_lsh_model_with_full_attention(x_BxLxD, mask_BxL):
    """LSH with one chunk covering the sequence is full attention with the LSH masks."""
    params = _params("lsh")
    for causal in (False, True):
        lsh = LSHSelfAttention(N_HEADS, D_HEAD, chunk_len=LENGTH, n_hashes=2, causal=causal)
        full = FullSelfAttention(N_HEADS, D_HEAD, causal=causal, shared_qk=True)
        y_lsh, _ = lsh.apply(params, x_BxLxD, mask_BxL)
        y_full, _ = full.apply(params, x_BxLxD, mask_BxL)
        np.testing.assert_allclose(y_full[mask_BxL], y_lsh[mask_BxL], atol=1e-5)


def test_full_attention_is_standard_dot_product_attention(x_BxLxD, mask_BxL):
    module = FullSelfAttention(N_HEADS, D_HEAD, causal=True)
    params = _params("full")
    y, _ = module.apply(params, x_BxLxD, mask_BxL)
    p = params["params"]
    q, k, v = (
        jnp.einsum("bld,dhk->blhk", x_BxLxD, p[n]["kernel"]) for n in ("query", "key", "value")
    )
    allowed = nn.combine_masks(
        nn.make_causal_mask(mask_BxL), nn.make_attention_mask(mask_BxL, mask_BxL)
    )
    out = nn.dot_product_attention(q, k, v, mask=allowed.astype(bool))
    expected = jnp.einsum("blhk,hkd->bld", out, p["out"]["kernel"])
    np.testing.assert_allclose(y[mask_BxL], expected[mask_BxL], atol=1e-5)


def test_lsh_hashes_with_the_hash_rng_and_reuses_buckets(x_BxLxD, mask_BxL):
    module, params = MODULES["lsh"], _params("lsh")
    train = _apply(module, deterministic=False)
    rngs = lambda seed: {"hash": jax.random.key(seed)}  # noqa: E731
    y0, buckets0 = train(params, x_BxLxD, mask_BxL, rngs=rngs(0))
    y0_again, buckets0_again = train(params, x_BxLxD, mask_BxL, rngs=rngs(0))
    y1, buckets1 = train(params, x_BxLxD, mask_BxL, rngs=rngs(1))
    np.testing.assert_array_equal(y0_again, y0)
    np.testing.assert_array_equal(buckets0_again, buckets0)
    assert not np.array_equal(buckets1, buckets0)
    # given buckets replace hashing, whatever the hash rng says
    y_reused, buckets_reused = train(params, x_BxLxD, mask_BxL, rngs=rngs(1), buckets=buckets0)
    np.testing.assert_array_equal(y_reused, y0)
    np.testing.assert_array_equal(buckets_reused, buckets0)
    with pytest.raises(ValueError, match="'hash' rng"):
        train(params, x_BxLxD, mask_BxL)


def test_lsh_evaluation_without_rngs_is_deterministic(x_BxLxD):
    module, params = MODULES["lsh"], _params("lsh")
    y, buckets = _apply(module)(params, x_BxLxD)
    y_again, _ = _apply(module)(params, x_BxLxD)
    np.testing.assert_array_equal(y_again, y)
    n_buckets = 2 * LENGTH // CHUNK  # automatic: two per chunk
    assert int(buckets.max()) < n_buckets and int(buckets.min()) >= 0


def test_lsh_n_hashes_can_be_raised_at_apply_time(x_BxLxD):
    module, params = MODULES["lsh"], _params("lsh")
    y8, buckets8 = _apply(module, n_hashes=8)(params, x_BxLxD)
    assert buckets8.shape == (BATCH, N_HEADS, 8, LENGTH)
    y2, _ = _apply(module)(params, x_BxLxD)
    assert np.all(np.isfinite(y8)) and not np.allclose(y8, y2)


@pytest.mark.parametrize("name", ["full", "lsh"])
def test_attention_dropout_uses_the_dropout_rng(name, x_BxLxD):
    module = MODULES[name].clone(dropout_rate=0.2)
    params = _params(name)
    train = _apply(module, deterministic=False)
    rngs = lambda seed: {"dropout": jax.random.key(seed), "hash": jax.random.key(0)}  # noqa: E731
    y0, _ = train(params, x_BxLxD, rngs=rngs(0))
    np.testing.assert_array_equal(train(params, x_BxLxD, rngs=rngs(0))[0], y0)
    assert not np.allclose(train(params, x_BxLxD, rngs=rngs(1))[0], y0)
    y_eval, _ = _apply(module)(params, x_BxLxD)  # deterministic: no dropout
    np.testing.assert_allclose(y_eval, _apply(MODULES[name])(params, x_BxLxD)[0], atol=1e-6)


@pytest.mark.parametrize("name", ["local", "lsh"])
def test_lengths_that_are_not_a_multiple_of_chunk_len(name):
    x = jax.random.normal(jax.random.key(2), (1, 37, D_MODEL))
    y, aux = MODULES[name].apply(_params(name), x)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    if name == "lsh":
        assert aux.shape == (1, N_HEADS, 2, 37)


@pytest.mark.parametrize("name", ["full", "local", "lsh"])
def test_bfloat16_modules(name, x_BxLxD, mask_BxL):
    module = MODULES[name].clone(dtype=jnp.bfloat16)
    params = _params(name)
    y16, _ = module.apply(params, x_BxLxD.astype(jnp.bfloat16), mask_BxL)
    y32, _ = _apply(MODULES[name])(params, x_BxLxD, mask_BxL)
    # Products in bfloat16, accumulated and returned in float32 (the residual stream's).
    assert y16.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(y16, np.float32)[mask_BxL], y32[mask_BxL], atol=1e-1, rtol=1e-1
    )


def test_gradients_through_the_lsh_module_under_jit(x_BxLxD, mask_BxL):
    module, params = MODULES["lsh"], _params("lsh")

    def loss(params, x):
        y, _ = module.apply(params, x, mask_BxL, rngs={"hash": jax.random.key(0)})
        return jnp.sum(y**2)

    grads_params, grads_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x_BxLxD)
    for g in jax.tree.leaves(grads_params) + [grads_x]:
        assert np.all(np.isfinite(g)) and np.any(g != 0)


@pytest.mark.parametrize(
    "kind, span, heads",
    [(kind, span, 0) for kind in ("local", "lsh", "full") for span in (8, 16, 24)]
    + [("lsh", 0, 1), ("lsh", 16, 1), ("local_2_before", 8, 0), ("local_2_before", 16, 0)],
)
def test_position_chunks_equal_the_whole_sequence(kind, span, heads, x_BxLxD, mask_BxL):
    """`position_chunk` (projections and output projection in rematerialized chunks; causal
    local attention computed whole span by span with its look-back) and LSH's
    `heads_per_step` (the layer one head at a time, summed) are the same function, values
    and gradients, padding masks included; 24 does not divide the length."""
    make = {
        "local": functools.partial(LocalSelfAttention, N_HEADS, D_HEAD, chunk_len=CHUNK),
        "lsh": functools.partial(
            LSHSelfAttention, N_HEADS, D_HEAD, chunk_len=CHUNK, n_hashes=2, heads_per_step=heads
        ),
        "full": functools.partial(FullSelfAttention, N_HEADS, D_HEAD),
        # A look-back of two chunks: longer than a span of 8 (whole-sequence path), not 16.
        "local_2_before": functools.partial(
            LocalSelfAttention, N_HEADS, D_HEAD, chunk_len=CHUNK, n_chunks_before=2
        ),
    }[kind]
    whole = make(causal=True, **({"heads_per_step": 0} if kind == "lsh" else {}))
    chunked = make(causal=True, position_chunk=span)
    params = whole.init(jax.random.key(1), x_BxLxD)["params"]

    def loss(module, p, x):
        y = module.apply({"params": p}, x, mask_BxL)[0]
        return jnp.sum(jnp.sin(y) * mask_BxL[..., None]), y

    (l_whole, y_whole), g_whole = jax.value_and_grad(
        functools.partial(loss, whole), argnums=(0, 1), has_aux=True
    )(params, x_BxLxD)
    (l_chunked, y_chunked), g_chunked = jax.value_and_grad(
        functools.partial(loss, chunked), argnums=(0, 1), has_aux=True
    )(params, x_BxLxD)
    valid = np.asarray(mask_BxL)
    np.testing.assert_allclose(
        np.asarray(y_chunked)[valid], np.asarray(y_whole)[valid], rtol=1e-5, atol=1e-5
    )
    for a, b in zip(jax.tree.leaves(g_chunked), jax.tree.leaves(g_whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_chunks_before", [1, 2])
def test_local_decoding_reads_the_module_chunk_settings(n_chunks_before, x_BxLxD):
    """A causal local module decodes through its cache (a prefill, then one position at a
    time) exactly as its training forward pass, with the ring sized by its own
    `n_chunks_before`: the step's window reaches as far back as training's."""
    module = LocalSelfAttention(
        N_HEADS, D_HEAD, chunk_len=CHUNK, n_chunks_before=n_chunks_before, causal=True
    )
    params = module.init(jax.random.key(1), x_BxLxD)
    whole = module.apply(params, x_BxLxD)[0]
    cache = caches.empty_self_cache(
        "local", BATCH, LENGTH, N_HEADS, D_HEAD, jnp.float32,
        local_chunk_len=module.chunk_len, n_chunks_before=module.n_chunks_before,
    )  # fmt: skip
    assert cache["k"].shape[2] == (n_chunks_before + 1) * CHUNK
    prefix = 5
    out, cache = module.apply(params, x_BxLxD[:, :prefix], cache=cache, start=jnp.int32(0))
    outs = [out]
    step = jax.jit(lambda x, cache, t: module.apply(params, x, cache=cache, start=t))
    for t in range(prefix, LENGTH):
        out, cache = step(x_BxLxD[:, t : t + 1], cache, jnp.int32(t))
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), whole, rtol=1e-5, atol=1e-5)
