"""LSH, local and full attention (reformer/attention/lsh.py) against the slow reference in
tests/lsh_reference.py: outputs and gradients, masks, causality, transformations, memory."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import lsh_reference as ref
import numpy as np
import pytest

from reformer.attention import lsh

LENGTH, D, CHUNK, N_BUCKETS = 32, 8, 4, 4  # few buckets: many collisions, 8 chunks a round


def _inputs(seed: int, length: int = LENGTH, d: int = D):
    rng = np.random.default_rng(seed)
    qk, v, cotangent = (rng.normal(size=(length, d)).astype(np.float32) for _ in range(3))
    return qk, v, cotangent


def _rotations(seed: int, n_hashes: int, n_buckets: int = N_BUCKETS, d: int = D):
    return jax.random.normal(jax.random.key(seed), (d, n_hashes, n_buckets // 2))


def _padding_mask(length: int, n_padding: int) -> np.ndarray:
    return np.arange(length) < length - n_padding


def _reference_value_and_grad(fn, cotangent, *args):
    """Reference output and gradients of `sum(fn(*args) * cotangent)`, in float64."""
    with jax.enable_x64(True):
        args64 = [np.asarray(a, np.float64) for a in args]

        def loss(*a):
            out = fn(*a)
            return jnp.sum(out * cotangent), out

        value_and_grad = jax.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True)
        (_, out), grads = jax.jit(value_and_grad)(*args64)
        return np.asarray(out), [np.asarray(g) for g in grads]


def _assert_close(actual, expected, mask=None, tol=1e-5):
    actual, expected = np.asarray(actual), np.asarray(expected)
    if mask is not None:  # outputs of padding positions are meaningless
        actual, expected = actual[mask], expected[mask]
    np.testing.assert_allclose(actual, expected, atol=tol, rtol=tol)


# ------------------------------------------------------------------------------- hashing


def test_hash_vectors_is_argmax_of_rotations_and_their_negatives():
    x = np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float32)
    rotations = np.asarray(_rotations(1, n_hashes=8, n_buckets=128, d=16))  # several blocks
    buckets = lsh.hash_vectors(jnp.asarray(x), jnp.asarray(rotations))
    assert buckets.shape == (8, 1000) and buckets.dtype == jnp.int32
    rotated = np.einsum("ld,dnr->nlr", x, rotations)
    expected = np.argmax(np.concatenate([rotated, -rotated], -1), -1)
    np.testing.assert_array_equal(buckets, expected)
    assert 0 <= int(buckets.min()) and int(buckets.max()) < 128


def test_angular_hash_breaks_ties_as_argmax_of_the_concatenation():
    rotated = np.array(
        [
            [1, -1, 0.5],
            [-1, 1, 0],
            [-2, 1, 0],
            [0, 0, 0],
            [0.5, -2, 2],
            [-3, 3, -3],
            [-0.0, 0, -0.0],
        ],
        np.float32,
    )
    expected = np.argmax(np.concatenate([rotated, -rotated], -1), -1)
    np.testing.assert_array_equal(lsh.buckets_from_rotated(jnp.asarray(rotated)), expected)


def test_factorized_hash_combines_one_angular_hash_per_factor():
    """bucket_factors (4, 8, 2): columns [0, 2), [2, 6), [6, 7) hashed into 4, 8 and 2 buckets,
    combined as b1 + 4 * b2 + 32 * b3 (trax's and HF's order); every bucket of 64 is used."""
    x = np.random.default_rng(1).normal(size=(4000, 16)).astype(np.float32)
    rotations = np.random.default_rng(2).normal(size=(16, 2, 7)).astype(np.float32)
    buckets = np.asarray(lsh.hash_vectors(jnp.asarray(x), jnp.asarray(rotations), (4, 8, 2)))
    rotated = np.einsum("ld,dnr->nlr", x, rotations)
    angular = lambda r: np.argmax(np.concatenate([r, -r], -1), -1)  # noqa: E731
    expected = (
        angular(rotated[..., 0:2])
        + 4 * angular(rotated[..., 2:6])
        + 32 * angular(rotated[..., 6:7])
    )
    np.testing.assert_array_equal(buckets, expected)
    assert set(np.unique(buckets)) == set(range(64))
    assert lsh.rotation_width(64, (4, 8, 2)) == 7 and lsh.rotation_width(64) == 32


def test_hash_is_angular():
    """Scaling keeps the bucket; negating moves it to the opposite one (b + n_buckets/2)."""
    x = jax.random.normal(jax.random.key(0), (64, D))
    rotations = _rotations(1, n_hashes=3, n_buckets=8)
    buckets = lsh.hash_vectors(x, rotations)
    np.testing.assert_array_equal(lsh.hash_vectors(3.0 * x, rotations), buckets)
    np.testing.assert_array_equal(lsh.hash_vectors(-x, rotations), (buckets + 4) % 8)


def test_default_n_buckets_is_two_per_chunk_and_even():
    assert lsh.default_n_buckets(1024, 128) == 16
    assert lsh.default_n_buckets(1000, 128) == 16
    assert lsh.default_n_buckets(64, 128) == 2


# ------------------------------------------------------------- LSH against the reference


@functools.cache
def _lsh_value_and_grad(**kwargs):
    """jit(value_and_grad) of LSH attention for one set of static options (cached)."""

    def loss(qk, v, rotations, mask, cotangent):
        out, buckets = lsh.lsh_attention(qk, v, rotations, mask=mask, **kwargs)
        return jnp.sum(out * cotangent), (out, buckets)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


# (n_hashes, causal, n_padding, attend_across_buckets, allow_duplicate_attention, before, after)
FAST_REFERENCE_CASES = [
    (1, False, 0, True, True, 1, 0),
    (2, True, 5, True, True, 1, 0),
    (4, False, 5, True, True, 1, 0),
    (4, True, 0, True, True, 1, 0),
    (2, False, 5, False, True, 1, 0),  # Appendix A: no attention across buckets
    (2, True, 5, True, False, 1, 0),  # Appendix A: no duplicate attention
    (4, False, 5, False, False, 1, 0),  # both
    (2, False, 0, True, True, 2, 1),  # wider, two-sided windows
    (8, True, 5, True, True, 1, 0),
]
SLOW_REFERENCE_CASES = [
    *[(n, c, p, True, True, 1, 0) for n in (1, 2, 4) for c in (False, True) for p in (0, 5)],
    *[
        (n, c, 5, a, d, 1, 0)
        for n in (1, 4)
        for c in (False, True)
        for a, d in ((0, 1), (1, 0), (0, 0))
    ],
    (4, True, 5, True, False, 1, 1),
    (2, True, 0, False, True, 0, 2),
]
REFERENCE_CASES = FAST_REFERENCE_CASES + [
    pytest.param(*case, marks=pytest.mark.slow)
    for case in SLOW_REFERENCE_CASES
    if case not in FAST_REFERENCE_CASES
]


@pytest.mark.parametrize(
    "n_hashes,causal,n_padding,across,duplicates,before,after", REFERENCE_CASES
)
def test_lsh_attention_matches_reference(
    n_hashes, causal, n_padding, across, duplicates, before, after
):
    seed = hash((n_hashes, causal, n_padding, across, duplicates, before, after)) % 1000
    qk, v, cotangent = _inputs(seed)
    mask = _padding_mask(LENGTH, n_padding) if n_padding else None
    if mask is not None:
        cotangent = cotangent * mask[:, None]  # padding outputs carry no gradient
    options = dict(
        chunk_len=CHUNK,
        n_chunks_before=before,
        n_chunks_after=after,
        causal=causal,
        attend_across_buckets=across,
        allow_duplicate_attention=duplicates,
    )
    (_, (out, buckets)), grads = _lsh_value_and_grad(**options)(
        qk, v, _rotations(seed, n_hashes), mask, cotangent
    )
    assert buckets.shape == (n_hashes, LENGTH)
    reference = functools.partial(
        ref.reference_lsh_attention, buckets_NxL=np.asarray(buckets), mask=mask, **options
    )
    ref_out, ref_grads = _reference_value_and_grad(reference, cotangent, qk, v)
    _assert_close(out, ref_out, mask)
    _assert_close(grads[0], ref_grads[0])
    _assert_close(grads[1], ref_grads[1])


@pytest.mark.parametrize(
    "n_hashes,causal,duplicates", [(1, True, True), (2, False, True), (2, True, False)]
)
def test_one_chunk_is_full_shared_qk_attention(n_hashes, causal, duplicates):
    """A chunk covering the sequence sees every key (repeatedly): full shared-QK attention."""
    qk, v, _ = _inputs(7, length=16)
    mask = _padding_mask(16, 3)
    out, _ = lsh.lsh_attention(
        qk,
        v,
        _rotations(3, n_hashes),
        chunk_len=16,
        causal=causal,
        mask=mask,
        allow_duplicate_attention=duplicates,
    )
    full = lsh.full_attention(qk, None, v, causal=causal, mask=mask)
    _assert_close(out, full, mask)
    _assert_close(
        full,
        ref.reference_full_attention(qk, qk, v, causal=causal, mask=mask, shared_qk=True),
        mask,
    )


def test_length_not_multiple_of_chunk_is_padded_inside():
    qk, v, _ = _inputs(3, length=30)
    rotations = _rotations(4, 2)
    out, buckets = lsh.lsh_attention(qk, v, rotations, chunk_len=CHUNK, causal=False)
    padded_out, padded_buckets = lsh.lsh_attention(
        np.pad(qk, ((0, 2), (0, 0))),
        np.pad(v, ((0, 2), (0, 0))),
        rotations,
        chunk_len=CHUNK,
        causal=False,
        mask=_padding_mask(32, 2),
    )
    assert out.shape == (30, D) and buckets.shape == (2, 30)
    _assert_close(out, padded_out[:30], tol=1e-6)
    np.testing.assert_array_equal(buckets, padded_buckets[:, :30])


def test_given_buckets_replace_hashing():
    qk, v, _ = _inputs(5)
    out, buckets = lsh.lsh_attention(qk, v, _rotations(5, 2), chunk_len=CHUNK, causal=True)
    again, same = lsh.lsh_attention(qk, v, None, chunk_len=CHUNK, causal=True, buckets=buckets)
    np.testing.assert_array_equal(again, out)
    np.testing.assert_array_equal(same, buckets)
    other, _ = lsh.lsh_attention(
        qk, v, None, chunk_len=CHUNK, causal=True, buckets=(buckets + 1) % N_BUCKETS
    )
    assert not np.allclose(other, out)
    with pytest.raises(ValueError, match="rotations"):
        lsh.lsh_attention(qk, v, None, chunk_len=CHUNK)


# ------------------------------------------------------------ local and full attention


@pytest.mark.parametrize(
    "causal,n_padding,before,after",
    [(True, 0, 1, 0), (False, 5, 1, 0), (True, 5, 2, 1), (False, 0, 0, 1)],
)
def test_local_attention_matches_reference(causal, n_padding, before, after):
    q, v, cotangent = _inputs(11 + before)
    k = _inputs(12)[0]
    mask = _padding_mask(LENGTH, n_padding) if n_padding else None
    if mask is not None:
        cotangent = cotangent * mask[:, None]
    options = dict(chunk_len=CHUNK, n_chunks_before=before, n_chunks_after=after, causal=causal)

    def loss(q, k, v):
        return jnp.sum(lsh.local_attention(q, k, v, mask=mask, **options) * cotangent)

    out = lsh.local_attention(q, k, v, mask=mask, **options)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    reference = functools.partial(ref.reference_local_attention, mask=mask, **options)
    ref_out, ref_grads = _reference_value_and_grad(reference, cotangent, q, k, v)
    _assert_close(out, ref_out, mask)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        _assert_close(grad, ref_grad)


@pytest.mark.parametrize(
    "causal,shared_qk,block_len",
    [(True, False, None), (False, False, None), (True, True, None), (True, False, 5),
     (True, True, 5), (False, True, 5)],
)  # fmt: skip
def test_full_attention_matches_reference(causal, shared_qk, block_len):
    """Also blockwise causal attention (block_len 5 leaves a ragged last block of 2 rows)."""
    q, v, cotangent = _inputs(21)
    k = _inputs(22)[0]
    mask = _padding_mask(LENGTH, 4)
    cotangent = cotangent * mask[:, None]

    def loss(q, k, v):
        out = lsh.full_attention(
            q, None if shared_qk else k, v, causal=causal, mask=mask, block_len=block_len
        )
        return jnp.sum(out * cotangent), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    reference = functools.partial(
        ref.reference_full_attention, causal=causal, mask=mask, shared_qk=shared_qk
    )
    ref_out, ref_grads = _reference_value_and_grad(reference, cotangent, q, k, v)
    _assert_close(out, ref_out, mask)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        _assert_close(grad, ref_grad)


# -------------------------------------------------------------------------- properties


@pytest.mark.parametrize("kind", ["lsh", "local", "full", "full_blocks"])
def test_causality_through_gradients(kind):
    """d out[t] / d inputs[s] is exactly zero for every s > t."""
    qk, v, _ = _inputs(31)
    buckets = lsh.hash_vectors(qk, _rotations(31, 2))
    attend = {
        "lsh": lambda qk, v: lsh.lsh_attention(
            qk, v, None, chunk_len=CHUNK, causal=True, buckets=buckets
        )[0],
        "local": lambda qk, v: lsh.local_attention(qk, qk * 0.5, v, chunk_len=CHUNK, causal=True),
        "full": lambda qk, v: lsh.full_attention(qk, None, v, causal=True),
        "full_blocks": lambda qk, v: lsh.full_attention(qk, None, v, causal=True, block_len=8),
    }[kind]
    jac_qk, jac_v = jax.jacrev(attend, argnums=(0, 1))(qk, v)  # [L, d, L, d] each
    future = np.arange(LENGTH)[None, :] > np.arange(LENGTH)[:, None]
    for jac in (jac_qk, jac_v):
        influence = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [t, s]
        assert np.all(influence[future] == 0.0)
    assert np.all(np.abs(np.asarray(jac_v)).sum(axis=(1, 2, 3)) > 0.0)  # sees the past


def test_jit_vmap_and_grad_compose():
    qk, v, cotangent = _inputs(41)
    heads_qk, heads_v = np.stack([qk, 2 * qk, -qk]), np.stack([v, v, 3 * v])
    rotations = jnp.stack([_rotations(s, 2) for s in range(3)])
    attend = functools.partial(lsh.lsh_attention, chunk_len=CHUNK, causal=True)

    def loss(qk, v, rotations):
        out, buckets = attend(qk, v, rotations)
        return jnp.sum(out * cotangent), (out, buckets)

    one_head = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (batched_out, batched_buckets)), batched_grads = jax.jit(jax.vmap(one_head))(
        heads_qk, heads_v, rotations
    )
    for h in (0, 2):
        (_, (out, buckets)), grads = one_head(heads_qk[h], heads_v[h], rotations[h])
        _assert_close(batched_out[h], out, tol=1e-6)
        np.testing.assert_array_equal(batched_buckets[h], buckets)
        _assert_close(batched_grads[0][h], grads[0], tol=1e-6)
        _assert_close(batched_grads[1][h], grads[1], tol=1e-6)


@functools.cache
def _dropout_value_and_grad():
    def loss(qk, v, buckets, rng, cotangent):
        out = lsh.lsh_attention(
            qk, v, None, chunk_len=CHUNK, buckets=buckets, dropout_rate=0.3, dropout_rng=rng
        )[0]
        return jnp.sum(out * cotangent), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def test_dropout_is_reproducible_from_its_rng():
    qk, v, cotangent = _inputs(51)
    buckets = lsh.hash_vectors(qk, _rotations(51, 2))
    attend = _dropout_value_and_grad()
    (_, first), _ = attend(qk, v, buckets, jax.random.key(0), cotangent)
    (_, again), _ = attend(qk, v, buckets, jax.random.key(0), cotangent)
    (_, other), _ = attend(qk, v, buckets, jax.random.key(1), cotangent)
    np.testing.assert_array_equal(again, first)
    assert not np.allclose(other, first)
    no_dropout = lsh.lsh_attention(qk, v, None, chunk_len=CHUNK, buckets=buckets)[0]
    assert not np.allclose(first, no_dropout)


def test_dropout_gradient_matches_finite_differences():
    """The custom backward pass regenerates the forward pass's dropout mask."""
    qk, v, cotangent = _inputs(52)
    buckets = lsh.hash_vectors(qk, _rotations(52, 2))
    attend = _dropout_value_and_grad()
    key = jax.random.key(3)
    _, (grad_qk, grad_v) = attend(qk, v, buckets, key, cotangent)
    direction_qk, direction_v = _inputs(53)[:2]
    eps = 1e-2
    (plus, _), _ = attend(qk + eps * direction_qk, v + eps * direction_v, buckets, key, cotangent)
    (minus, _), _ = attend(qk - eps * direction_qk, v - eps * direction_v, buckets, key, cotangent)
    analytic = np.sum(grad_qk * direction_qk) + np.sum(grad_v * direction_v)
    np.testing.assert_allclose(analytic, (plus - minus) / (2 * eps), rtol=2e-3)


def test_bfloat16_inputs():
    qk, v, _ = _inputs(61)
    rotations = _rotations(61, 2)
    attend = jax.jit(functools.partial(lsh.lsh_attention, chunk_len=CHUNK, causal=True))
    out32, buckets = attend(qk, v, rotations)
    out16, _ = attend(
        jnp.asarray(qk, jnp.bfloat16), jnp.asarray(v, jnp.bfloat16), None, buckets=buckets
    )
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=5e-2, rtol=5e-2)


def test_invalid_arguments_are_refused():
    qk, v, _ = _inputs(0)
    with pytest.raises(ValueError, match="chunk_len"):
        lsh.local_attention(qk, qk, v, chunk_len=0)
    with pytest.raises(ValueError, match="dropout_rng"):
        lsh.full_attention(qk, qk, v, dropout_rate=0.1)


# ------------------------------------------------------------------------------ memory


def _temp_bytes(attend, length: int, d: int = 64) -> int:
    """XLA temporary memory of forward + backward (compiled, not run)."""
    x = jax.ShapeDtypeStruct((length, d), jnp.float32)
    loss = lambda q, v: jnp.sum(attend(q, v) ** 2)  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_is_linear_in_length():
    """No [L, L] array: LSH temp memory at most doubles with L, full attention's quadruples."""

    def lsh_attention(q, v):
        length = q.shape[0]
        rotations = jax.random.normal(
            jax.random.key(0), (64, 2, lsh.default_n_buckets(length, 128) // 2)
        )
        return lsh.lsh_attention(q, v, rotations, chunk_len=128, causal=True)[0]

    def full_attention(q, v):
        return lsh.full_attention(q, None, v, causal=True)

    lsh_4k, lsh_8k = _temp_bytes(lsh_attention, 4096), _temp_bytes(lsh_attention, 8192)
    full_4k, full_8k = _temp_bytes(full_attention, 4096), _temp_bytes(full_attention, 8192)
    assert lsh_8k <= 2.2 * lsh_4k, (lsh_4k, lsh_8k)
    assert full_8k >= 3.5 * full_4k, (full_4k, full_8k)  # blocks of 256 rows: still O(L^2)
    assert lsh_8k < 0.1 * full_8k


@pytest.mark.slow
def test_64k_tokens_forward_and_backward():
    """One head at 64K tokens (automatic 1024 buckets, 2 hashes): finite outputs and grads."""
    length, d = 65536, 64
    qk, v = jax.random.normal(jax.random.key(0), (2, length, d))
    rotations = jax.random.normal(
        jax.random.key(1), (d, 2, lsh.default_n_buckets(length, 128) // 2)
    )

    def loss(qk, v):
        out, buckets = lsh.lsh_attention(qk, v, rotations, chunk_len=128, causal=True)
        return jnp.sum(out**2), buckets

    (value, buckets), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(qk, v)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    assert int(buckets.max()) < 1024 and len(np.unique(np.asarray(buckets[0]))) > 900


def test_bucket_sort_with_one_key_equals_the_stable_sort():
    """The combined `bucket * L + position` key orders exactly as the stable two-key sort,
    padding last; the fallback (bucket count unknown) is that stable sort."""
    n_buckets, length = 16, 200
    buckets = jax.random.randint(jax.random.key(3), (3, length), 0, n_buckets)
    ticker = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), buckets.shape)
    for valid in (None, jnp.arange(length) < 150):
        key = buckets if valid is None else jnp.where(valid, buckets, lsh._PAD_BUCKET)
        fast = lsh._sort_by_bucket(key, ticker, n_buckets)
        stable = lsh._sort_by_bucket(key, ticker, None)
        expected = np.argsort(np.asarray(key), axis=1, kind="stable")
        np.testing.assert_array_equal(fast, expected)
        np.testing.assert_array_equal(stable, expected)
