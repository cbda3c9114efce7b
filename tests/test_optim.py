"""Learning-rate schedule and optimizers."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reformer.config import default_config
from reformer.training.optimizer import make_optimizer, make_schedule


def test_warmup_then_rsqrt():
    opt = default_config().optimizer
    opt.learning_rate, opt.warmup_steps, opt.schedule = 0.01, 100, "rsqrt"
    lr = make_schedule(opt)
    # Step s (0-based) uses the rate of update s+1: linear ramp, peak at warmup.
    np.testing.assert_allclose(lr(0), 0.01 / 100, rtol=1e-6)
    np.testing.assert_allclose(lr(49), 0.005, rtol=1e-6)
    np.testing.assert_allclose(lr(99), 0.01, rtol=1e-6)
    np.testing.assert_allclose(lr(399), 0.01 * np.sqrt(100 / 400), rtol=1e-6)


def test_warmup_then_constant():
    opt = default_config().optimizer
    opt.learning_rate, opt.warmup_steps, opt.schedule = 0.01, 10, "constant"
    lr = make_schedule(opt)
    np.testing.assert_allclose([lr(4), lr(9), lr(1000)], [0.005, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adafactor"])
def test_optimizers_descend(name):
    opt = default_config().optimizer
    opt.name, opt.learning_rate, opt.warmup_steps, opt.schedule = name, 0.3, 0, "constant"
    tx = make_optimizer(opt)
    params = {"w": jnp.full((4, 4), 3.0)}
    state = tx.init(params)
    loss = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
    start = loss(params)
    for _ in range(20):
        grads = {"w": 2 * params["w"]}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert loss(params) < 0.5 * start
