"""The language model: shapes, next-token shift, causality through gradients, the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer.model.blocks import loss_and_metrics
from reformer.model.model_config import ModelConfig
from reformer.model.models import ReformerLM, shift_right
from tests.conftest import load_config
from tests.jacobians import embedded_jacobian


def reformer_config():
    """tiny, as a Reformer: reversible LSH and local layers, chunked feed-forward, axial
    positions."""
    config = load_config("tiny")
    m = config.model
    m.attention_types = ("lsh", "local")
    m.residual = "reversible"
    m.lsh_chunk_len, m.local_chunk_len, m.n_hashes = 8, 8, 2
    m.position_chunk_size = 8
    m.positional, m.axial_shape, m.axial_dims = "axial", (4, 8), (12, 20)
    return config


@pytest.fixture(scope="module", params=["transformer", "reformer"])
def model_and_params(request):
    config = load_config("tiny") if request.param == "transformer" else reformer_config()
    model = ReformerLM(ModelConfig.from_config(config.model))
    tokens = jnp.zeros((1, 32), jnp.int32)
    params = model.init({"params": jax.random.key(0)}, tokens)["params"]
    return model, params


def test_shift_right():
    tokens = jnp.array([[5, 6, 7, 8]])
    np.testing.assert_array_equal(shift_right(tokens), [[0, 5, 6, 7]])


def test_logits_shape_and_dtype(model_and_params):
    model, params = model_and_params
    tokens = jax.random.randint(jax.random.key(1), (3, 32), 0, 16)
    logits = model.apply({"params": params}, tokens)
    assert logits.shape == (3, 32, 16) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_causal_through_gradients(model_and_params, monkeypatch):
    """The output at t depends on inputs at positions <= t only.

    Input position s holds token s-1 (the model shifts right), so the prediction at t uses
    tokens before t. Gradients are taken with respect to a perturbation added to the
    embedded inputs, position by position. For the Reformer this covers the reversible
    stack's custom backward pass, LSH and local attention.
    """
    model, params = model_and_params
    length = 32
    tokens = jax.random.randint(jax.random.key(2), (1, length), 0, 16)
    jac = embedded_jacobian(model, params, tokens, monkeypatch)
    dependence = np.abs(jac).sum(-1)  # [L_out, L_in]
    assert np.all(np.triu(dependence, k=1) == 0.0), "an output depends on later inputs"
    assert np.all(np.diag(dependence) > 0.0), "an output ignores its own input"
    if model.cfg.attention_types == ("full",):  # Full attention sees every earlier input.
        assert np.all(dependence[np.tril_indices(length)] > 0.0), "an earlier input is ignored"


def test_loss_and_metrics_use_weights_only():
    logits = jnp.log(jnp.array([[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]]))
    tokens = jnp.array([[0, 0, 1]])
    weights = jnp.array([[1.0, 1.0, 0.0]])
    loss, sums = loss_and_metrics(logits, tokens, weights)
    np.testing.assert_allclose(loss, -(np.log(0.7) + np.log(0.2)) / 2, rtol=1e-6)
    assert float(sums["correct_sum"]) == 1.0 and float(sums["weight_sum"]) == 2.0


def test_chunked_loss_equals_the_whole_loss_and_needs_less_memory():
    """Large vocabulary: the loss in chunks of 16 positions (the last one partial) gives the
    same loss, sums and gradients as the whole [B, L, V] logits, in less XLA temp memory."""
    config = load_config("tiny")
    config.model.vocab_size = 4096
    config.model.max_len = 200
    whole = ReformerLM(ModelConfig.from_config(config.model))
    config.model.loss_chunk_size = 16
    chunked = ReformerLM(ModelConfig.from_config(config.model))
    tokens = jax.random.randint(jax.random.key(1), (2, 200), 0, 4096)
    weights = (jax.random.uniform(jax.random.key(2), (2, 200)) > 0.3).astype(jnp.float32)
    params = whole.init({"params": jax.random.key(0)}, tokens[:, :8])["params"]

    def loss(model):
        return jax.jit(
            jax.value_and_grad(
                lambda p: model.apply({"params": p}, tokens, weights_BxL=weights), has_aux=True
            )
        )

    (l_whole, s_whole), g_whole = loss(whole)(params)
    (l_chunk, s_chunk), g_chunk = loss(chunked)(params)
    np.testing.assert_allclose(l_chunk, l_whole, rtol=1e-5)
    for k in s_whole:
        np.testing.assert_allclose(s_chunk[k], s_whole[k], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_chunk), jax.tree.leaves(g_whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    temp = {
        name: loss(m).lower(params).compile().memory_analysis().temp_size_in_bytes
        for name, m in (("whole", whole), ("chunked", chunked))
    }
    logits_bytes = 2 * 200 * 4096 * 4
    assert temp["whole"] - temp["chunked"] > logits_bytes, temp
