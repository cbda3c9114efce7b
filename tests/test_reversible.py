"""The reversible stack: exact gradients, saved buckets reused, memory flat in depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer.model import reversible
from reformer.model.blocks import AttentionHalf, FeedForwardHalf
from reformer.model.model_config import ModelConfig
from reformer.model.models import ReformerLM
from tests.conftest import load_config, load_script

LENGTH = 64


def small_config(**overrides):
    c = load_config("tiny").model
    c.n_layers = 4
    c.attention_types = ("lsh", "local")
    c.lsh_chunk_len = 8
    c.local_chunk_len = 8
    c.n_hashes = 2
    c.dropout = 0.1
    c.attention_dropout = 0.1
    c.position_chunk_size = 16
    c.max_len = LENGTH
    for k, v in overrides.items():
        c[k] = v
    return ModelConfig.from_config(c)


def model_grads(cfg, params, tokens, rngs):
    def loss(params):
        logits = ReformerLM(cfg).apply({"params": params}, tokens, deterministic=False, rngs=rngs)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * jnp.arange(LENGTH))

    return jax.jit(jax.value_and_grad(loss))(params)


def assert_trees_close(a, b, rtol):
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        x, y = np.asarray(x), np.asarray(y)
        scale = max(np.abs(y).max(), 1e-6)
        assert np.abs(x - y).max() <= rtol * scale, (
            jax.tree_util.keystr(path),
            np.abs(x - y).max() / scale,
        )


@pytest.mark.parametrize("lsh_heads_per_step", [0, 1])
def test_reversible_gradients_equal_plain_gradients(lsh_heads_per_step):
    """4 layers (LSH and local), dropout on, 2 hashes: the custom_vjp's gradients equal those
    of the same parameters run without reversibility (LSH layers also one head at a time,
    reusing the forward pass's buckets per head)."""
    rev, plain = (
        small_config(residual=r, lsh_heads_per_step=lsh_heads_per_step)
        for r in ("reversible", "two_stream")
    )
    tokens = jax.random.randint(jax.random.key(0), (2, LENGTH), 0, 16)
    params = ReformerLM(rev).init({"params": jax.random.key(1)}, tokens)["params"]
    rngs = {"dropout": jax.random.key(2), "hash": jax.random.key(3)}
    loss_rev, g_rev = model_grads(rev, params, tokens, rngs)
    loss_plain, g_plain = model_grads(plain, params, tokens, rngs)
    np.testing.assert_allclose(loss_rev, loss_plain, rtol=1e-6)
    assert_trees_close(g_rev, g_plain, rtol=1e-4)


def _stack_pieces(n_layers=2):
    """An LSH-only stack built from the model's own halves: (fs, gs, params, x)."""
    cfg = small_config(
        n_layers=n_layers, attention_types=("lsh",), dropout=0.0, attention_dropout=0.0, d_model=32
    )
    attention_def, ff_def = AttentionHalf(cfg, "lsh"), FeedForwardHalf(cfg)
    x = jax.random.normal(jax.random.key(0), (2, LENGTH, 32))

    def init(key):
        k_f, k_g = jax.random.split(key)
        return (
            attention_def.init({"params": k_f, "hash": k_f}, x, None, deterministic=True)["params"],
            ff_def.init(k_g, x, deterministic=True)["params"],
        )

    params = (jax.vmap(init)(jax.random.split(jax.random.key(1), n_layers)),)

    def f(p, x, r, buckets, mask, memory):
        return attention_def.apply(
            {"params": p}, x, mask, deterministic=True, buckets=buckets, rngs=r
        )

    def g(p, x, r, aux, mask, memory):
        return ff_def.apply({"params": p}, x, deterministic=True), None

    return f, g, params, x


def _stack_grads(stack, halves, params, x, rngs):
    def loss(params, x):
        y1, y2 = stack(halves, params, x, x, rngs)
        return jnp.sum(jnp.sin(y1) * y2)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


def test_saved_buckets_are_reused_in_the_backward_pass():
    """The backward recomputation hashes with other keys (the half is given other hash keys
    whenever it is recomputed): with the saved buckets reused the gradients do not change;
    hashing again puts positions in other buckets and the gradients are wrong."""
    f, g, params, x = _stack_pieces()
    rngs, other = {"hash": jax.random.key(0)}, {"hash": jax.random.key(100)}

    def recomputed_with_other_keys(p, x, r, buckets, mask, memory):  # buckets: recomputing
        return f(p, x, r if buckets is None else other, buckets, mask, memory)

    def rehashing(p, x, r, buckets, mask, memory):  # ignores the saved buckets
        return f(p, x, r if buckets is None else other, None, mask, memory)

    exact = _stack_grads(reversible.plain_stack, [(f, g)], params, x, rngs)
    reused = _stack_grads(
        reversible.reversible_stack, [(recomputed_with_other_keys, g)], params, x, rngs
    )
    assert_trees_close(reused, exact, rtol=1e-4)
    rehashed = _stack_grads(reversible.reversible_stack, [(rehashing, g)], params, x, rngs)
    with pytest.raises(AssertionError):
        assert_trees_close(rehashed, exact, rtol=1e-2)


def test_reversible_stack_keeps_no_per_layer_activations():
    """XLA temp memory of forward+backward: per extra layer, the reversible stack adds no
    more than that layer's parameter gradients (one row of the stacked gradients), while
    the plain stack adds its activations, several times more (fewer than before the halves
    rematerialized their position-wise work, but still the whole attention kernel's)."""

    def temp_and_layer_bytes(stack, n_layers):
        f, g, params, x = _stack_pieces(n_layers)
        rngs = {"hash": jax.random.key(0)}

        def loss(params, x):
            y1, y2 = stack([(f, g)], params, x, x, rngs)
            return jnp.sum(y1 * y2)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
        layer_bytes = sum(a.nbytes for a in jax.tree.leaves(params)) // n_layers
        return compiled.memory_analysis().temp_size_in_bytes, layer_bytes

    (rev2, layer_bytes), (rev12, _) = (
        temp_and_layer_bytes(reversible.reversible_stack, n) for n in (2, 12)
    )
    (plain2, _), (plain12, _) = (temp_and_layer_bytes(reversible.plain_stack, n) for n in (2, 12))
    rev_per_layer, plain_per_layer = (rev12 - rev2) / 10, (plain12 - plain2) / 10
    assert rev_per_layer <= 1.1 * layer_bytes, (rev_per_layer, layer_bytes)
    assert plain_per_layer >= 3 * layer_bytes, (plain_per_layer, layer_bytes)


def test_bfloat16_reversible_gradients_equal_plain_gradients(monkeypatch):
    """In bfloat16 mode the residual streams and their reconstruction stay float32 and only
    the operands of the branches' matrix products are bfloat16, so the reversible backward
    pass gives nearly the plain one's gradients (`scripts/bf16_gradient_gap.py`: a 6-layer
    local + LSH model, d_model 64, 2 heads of 32, length 128, batch 2)."""
    stream_dtypes = []
    for name in ("reversible_stack", "plain_stack"):
        original = getattr(reversible, name)

        def recording(*args, _original=original, **kwargs):
            y1, y2 = _original(*args, **kwargs)
            stream_dtypes.extend([args[2].dtype, args[3].dtype, y1.dtype, y2.dtype])
            return y1, y2

        monkeypatch.setattr(reversible, name, recording)
    bf16_gradient_gap = load_script("bf16_gradient_gap")

    assert bf16_gradient_gap.gap_config(True).dtype == "bfloat16"
    gaps = bf16_gradient_gap.gaps(seed=0)
    assert set(stream_dtypes) == {jnp.dtype(jnp.float32)}, stream_dtypes
    # 7.3e-2 when the streams were bfloat16, 1.3e-3 to 2.2e-3 with float32 streams; about
    # 1e-8 since the streams are on a fixed-point grid (exact reconstruction) and no
    # product's gradient is rounded to bfloat16. Four other seeds: 1e-8 to 6e-4 (a backward
    # graph that sums a cotangent in another order can flip a bfloat16 rounding).
    assert gaps["rev_vs_plain"] < 1e-3, gaps
    # Against float32 gradients, both bfloat16 gradients are off by about 8e-2 (bfloat16's
    # own rounding); the reversible one is no worse than the plain one.
    assert gaps["rev_vs_f32"] < 1.02 * gaps["plain_vs_f32"], gaps


def test_fixed_point_streams_reconstruct_exactly():
    """On the fixed-point grid, `(x + f) - f == x` bit for bit, where float32 loses the low
    bits of `x` when `|f|` is larger; the rounding passes gradients through unchanged."""
    spacing = 2.0**-16
    k1, k2 = jax.random.split(jax.random.key(0))
    x = reversible.on_grid(jax.random.normal(k1, (4096,)), spacing)
    f = reversible.on_grid(30.0 * jax.random.normal(k2, (4096,)), spacing)
    assert bool(jnp.all((x + f) - f == x))
    x_raw, f_raw = jax.random.normal(k1, (4096,)), 30.0 * jax.random.normal(k2, (4096,))
    assert not bool(jnp.all((x_raw + f_raw) - f_raw == x_raw))
    assert float(jnp.max(jnp.abs(reversible.on_grid(x_raw, spacing) - x_raw))) <= spacing / 2
    grad = jax.grad(lambda v: jnp.sum(3.0 * reversible.on_grid(v, spacing)))(x_raw)
    assert bool(jnp.all(grad == 3.0))
    assert reversible.on_grid(x_raw, None) is x_raw
