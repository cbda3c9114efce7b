"""The extension points of docs/architecture.md ("Where to add"): a config field is one
`Field` in the schema, an attention type one `register` call; each reaches everything that
needs it, and a model with both trains."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from reformer.config import ConfigError, default_config, schema, validate
from reformer.config.__main__ import schema_markdown
from reformer.data import make_train_stream
from reformer.model import attention_types
from reformer.model.model_config import model_config_class
from reformer.model.models import make_model
from reformer.training import checkpoints
from reformer.training.optimizer import make_optimizer, make_schedule
from reformer.training.state import make_init_state
from reformer.training.steps import train_step
from tests.conftest import load_config


@pytest.fixture
def toy_field(monkeypatch):
    """`model.toy_scale`, added to the schema in one place (one line in schema.py)."""
    field = schema.Field(1.0, "Toy attention's output scale.", schema.POSITIVE_FINITE, schema.SAME)
    monkeypatch.setitem(schema.MODEL, "toy_scale", field)


class CumulativeMean(nn.Module):
    """A toy attention type: every position takes the mean of the projected values of the
    positions up to it, scaled by `scale`."""

    n_heads: int
    d_head: int
    scale: float = 1.0
    causal: bool = True
    dropout_rate: float = 0.0
    dtype: object = jnp.float32
    position_chunk: int = 0

    @nn.compact
    def __call__(self, x_BxLxD, mask_BxL=None, *, deterministic=True, n_hashes=None,
                 buckets=None, normalize=None, finish=None):  # fmt: skip
        h_BxLxD = normalize(x_BxLxD)
        v_BxLxD = nn.Dense(x_BxLxD.shape[-1], use_bias=False, name="value")(h_BxLxD)
        counts_L = jnp.arange(1, x_BxLxD.shape[1] + 1, dtype=v_BxLxD.dtype)
        out_BxLxD = self.scale * jnp.cumsum(v_BxLxD, axis=1) / counts_L[:, None]
        return finish(0, out_BxLxD), None


@pytest.fixture
def toy_attention():
    """The attention type "toy", registered in one place."""

    def build(cfg, common, chunks):
        return CumulativeMean(scale=cfg.toy_scale, **common)

    attention_types.register("toy", build)
    yield
    attention_types.unregister("toy")


def test_a_new_field_reaches_config_validation_config_json_and_the_resume_check(
    toy_field, tmp_path
):
    config = load_config("tiny")  # A config file written before the field existed.
    assert default_config().model.toy_scale == 1.0 and config.model.toy_scale == 1.0
    assert "`model.toy_scale`" in schema_markdown()
    config.model.toy_scale = -2.0
    with pytest.raises(ConfigError, match=r"config.model.toy_scale: must be positive"):
        validate(config)
    config.model.toy_scale = 2.0
    validate(config)
    assert model_config_class(schema.MODEL).from_config(config.model).toy_scale == 2.0

    workdir = str(tmp_path)
    checkpoints.write_config(workdir, config)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["toy_scale"] == 2.0
    checkpoints.check_config_matches(workdir, config)  # The same value resumes.
    config.model.toy_scale = 3.0
    with pytest.raises(ConfigError, match=r"config.model.toy_scale: checkpoint has 2.0"):
        checkpoints.check_config_matches(workdir, config)


def test_a_new_attention_type_with_its_field_trains_a_step(toy_field, toy_attention):
    config = load_config("tiny")
    config.model.attention_types = ("toy", "local")
    config.model.local_chunk_len = 16
    config.model.toy_scale = 0.5
    validate(config)
    # The model's config class as it is derived at import, with today's schema.
    cfg = model_config_class(schema.MODEL).from_config(config.model)
    model = make_model(cfg)
    tx = make_optimizer(config.optimizer)
    key = jax.random.key(0)
    state = jax.jit(make_init_state(config, model, tx))(key)
    toy = state.params["layers"]["0_toy"]["attention"]["attention"]["value"]["kernel"]
    batch = next(make_train_stream(config))
    step = jax.jit(
        lambda s, b, k: train_step(
            s, b, k, model=model, tx=tx, schedule=make_schedule(config.optimizer)
        )
    )
    new_state, metrics = step(state, batch, key)
    assert bool(metrics["finite"]) and int(new_state.step) == 1
    new_toy = new_state.params["layers"]["0_toy"]["attention"]["attention"]["value"]["kernel"]
    assert not np.allclose(np.asarray(toy), np.asarray(new_toy))  # The toy layer learns.


def test_an_unregistered_attention_type_is_refused():
    config = load_config("tiny")
    config.model.attention_types = ("toy",)
    with pytest.raises(ConfigError, match=r"config.model.attention_types: 'toy' is not one of"):
        validate(config)
