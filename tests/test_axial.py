"""Axial positions over any number of axes: against a direct computation, the decoding path,
gradients, a model with a 3-axis grid, and the config's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer.config import ConfigError, validate
from reformer.model.layers import AxialPositionalEmbedding
from reformer.model.model_config import ModelConfig
from reformer.model.models import ReformerLM, shift_right
from tests.conftest import load_config

# (shape, dims, a length): two, three and four axes; lengths that end inside a row of the
# first axis, on a row boundary, and the whole grid.
CASES = [
    ((4, 8), (3, 5), 32),
    ((4, 8), (3, 5), 13),
    ((3, 4, 2), (2, 3, 5), 24),
    ((3, 4, 2), (2, 3, 5), 11),
    ((3, 4, 2), (2, 3, 5), 8),
    ((2, 3, 2, 2), (1, 2, 3, 4), 17),
]


def direct_grid(tables: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Row i: the tables at the digits of i in the grid (row-major, the last axis fastest),
    concatenated; built position by position."""
    rows = []
    for i in range(int(np.prod(shape))):
        digits = np.unravel_index(i, shape)
        rows.append(np.concatenate([t[j] for t, j in zip(tables, digits, strict=True)]))
    return np.stack(rows)


def init(shape, dims, length):
    module = AxialPositionalEmbedding(shape=shape, dims=dims)
    params = module.init(jax.random.key(0), length)["params"]
    return module, params


def tables_of(params, n: int) -> list:
    return [params[f"axial_{k}"] for k in range(n)]


@pytest.mark.parametrize("shape, dims, length", CASES)
def test_embedding_equals_direct_computation(shape, dims, length):
    module, params = init(shape, dims, length)
    for k, (s, d) in enumerate(zip(shape, dims, strict=True)):
        assert params[f"axial_{k}"].shape == (s, d)
    assert set(params) == {f"axial_{k}" for k in range(len(shape))}
    out = module.apply({"params": params}, length)
    assert out.shape == (length, sum(dims))
    expected = direct_grid([np.asarray(t) for t in tables_of(params, len(shape))], shape)
    np.testing.assert_array_equal(out, expected[:length])


def test_three_axis_digits_spelled_out():
    """Position 1 * (4 * 2) + 2 * 2 + 1 = 13 of a (3, 4, 2) grid has digits (1, 2, 1)."""
    module, params = init((3, 4, 2), (2, 3, 5), 24)
    row = module.apply({"params": params}, 24)[13]
    e0, e1, e2 = tables_of(params, 3)
    np.testing.assert_array_equal(row, np.concatenate([e0[1], e1[2], e2[1]]))


@pytest.mark.parametrize("shape, dims, length", CASES)
def test_decoding_rows_equal_training_rows(shape, dims, length):
    module, params = init(shape, dims, length)
    full = module.apply({"params": params}, length)
    at = jax.jit(lambda p, n, s: module.apply({"params": p}, n, s), static_argnums=1)
    for start, n in ((0, length), (0, 1), (length - 1, 1), (length // 3, length - length // 3)):
        np.testing.assert_array_equal(at(params, n, start), full[start : start + n])


@pytest.mark.parametrize("shape, dims, length", CASES[1::2])
def test_gradients_reach_every_table(shape, dims, length):
    """The broadcast's gradient equals that of a gather of the direct grid's rows, and every
    table gets some."""
    module, params = init(shape, dims, length)
    weights = jax.random.normal(jax.random.key(1), (length, sum(dims)))
    digits = np.unravel_index(np.arange(length), shape)

    def gathered(p):
        tables = tables_of(p, len(shape))
        return jnp.concatenate([t[j] for t, j in zip(tables, digits, strict=True)], axis=-1)

    loss = lambda fn: lambda p: jnp.sum(jnp.sin(fn(p)) * weights)  # noqa: E731
    grads = jax.grad(loss(lambda p: module.apply({"params": p}, length)))(params)
    expected = jax.grad(loss(gathered))(params)
    for k in range(len(shape)):
        g = grads[f"axial_{k}"]
        np.testing.assert_allclose(g, expected[f"axial_{k}"], rtol=1e-5, atol=1e-6)
        assert np.any(g != 0), f"axial_{k} gets no gradient"


def test_length_beyond_the_grid_and_mismatched_axes():
    module, params = init((3, 4, 2), (2, 3, 5), 24)
    with pytest.raises(ValueError, match=r"exceeds the axial grid 3 x 4 x 2 = 24"):
        module.apply({"params": params}, 25)
    with pytest.raises(ValueError, match="one width per axis"):
        AxialPositionalEmbedding(shape=(3, 4, 2), dims=(5, 5)).init(jax.random.key(0), 8)


def three_axis_config():
    """tiny (one layer) with a (2, 4, 4) grid, widths (8, 8, 16)."""
    c = load_config("tiny")
    c.model.n_layers = 1
    c.model.positional, c.model.axial_shape, c.model.axial_dims = "axial", (2, 4, 4), (8, 8, 16)
    return c


def test_model_with_three_axes_embeds_decoding_positions_as_training():
    c = three_axis_config()
    validate(c)
    model = ReformerLM(ModelConfig.from_config(c.model))
    tokens = jax.random.randint(jax.random.key(2), (2, 32), 1, 16)
    params = model.init({"params": jax.random.key(0)}, tokens)["params"]
    assert params["axial_pos"]["axial_2"].shape == (4, 16)
    logits = model.apply({"params": params}, tokens)
    assert logits.shape == (2, 32, 16) and np.all(np.isfinite(logits))
    bound = model.bind({"params": params})
    inputs = shift_right(tokens)
    whole = bound.embed_positions(inputs, 0)
    pos = params["axial_pos"]
    table = params["embed"]["embedding"]
    expected = table[inputs] + direct_grid(
        [np.asarray(pos[f"axial_{k}"]) for k in range(3)], (2, 4, 4)
    )
    np.testing.assert_allclose(whole, expected, rtol=1e-6)
    np.testing.assert_allclose(bound.embed_positions(inputs[:, 9:14], 9), whole[:, 9:14], rtol=1e-6)


@pytest.mark.parametrize(
    "shape, dims, match",
    [
        (
            (2, 4, 4),
            (8, 8, 8),
            r"config\.model\.axial_dims: \(8, 8, 8\) adds up to 24; the widths must add up to "
            r"model\.d_model=32",
        ),
        (
            (2, 4, 3),
            (8, 8, 16),
            r"config\.model\.axial_shape: \(2, 4, 3\) covers 2 x 4 x 3 = 24 positions, fewer "
            r"than data\.seq_len=32",
        ),
        (
            (2, 4, 4),
            (16, 16),
            r"config\.model\.axial_dims: \(16, 16\) has 2 widths for the 3 axes of "
            r"model\.axial_shape=\(2, 4, 4\): one width per axis",
        ),
        ((32,), (32,), r"config\.model\.axial_shape: must be two or more positive integers"),
        ((2, 0, 16), (8, 8, 16), r"config\.model\.axial_shape: .*got \(2, 0, 16\)"),
        ((2, 4, 4), (8, -8, 32), r"config\.model\.axial_dims: .*one width per axis"),
    ],
)
def test_bad_axial_configs_name_the_field(shape, dims, match):
    c = three_axis_config()
    c.model.axial_shape, c.model.axial_dims = shape, dims
    with pytest.raises(ConfigError, match=match):
        validate(c)
