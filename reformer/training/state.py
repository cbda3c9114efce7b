"""The train state: the model a config names, fresh or fine-tuning state, its shapes and
shardings over the mesh, and the parameters of a workdir's latest checkpoint."""

from __future__ import annotations

import contextlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from reformer import storage, storage_faults
from reformer.model import models
from reformer.model.model_config import ModelConfig
from reformer.training import checkpoints, sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_model(config: ml_collections.ConfigDict):
    """The model of `config.model` (`model.kind`)."""
    return models.make_model(ModelConfig.from_config(config.model))


def make_init_state(config: ml_collections.ConfigDict, model, tx):
    """`key -> TrainState` of fresh parameters and optimizer state."""

    def init_state(key):
        return state_from_params(tx)(models.init_params(model, key, 1, config.data.seq_len))

    return init_state


def state_from_params(tx):
    """`params -> TrainState` at step 0 with fresh optimizer state (fine-tuning)."""

    def make(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return make


def _with_shardings(shapes, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings
    )


def abstract_state(config: ml_collections.ConfigDict, model, tx, mesh):
    """The train state's shapes and dtypes with their shardings over `mesh` (parameters and
    optimizer state split over `fsdp` where it is larger than 1), without computing it."""
    shapes = jax.eval_shape(make_init_state(config, model, tx), jax.random.key(0))
    return _with_shardings(shapes, sharding.state_shardings(shapes, mesh))


def abstract_params(config: ml_collections.ConfigDict, model, mesh=None):
    """The parameters' shapes and dtypes: laid out as training lays them out over `mesh`, or
    on one device (mesh None)."""
    shapes = jax.eval_shape(
        lambda k: models.init_params(model, k, 1, config.data.seq_len), jax.random.key(0)
    )
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return _with_shardings(shapes, jax.tree.map(lambda _: device, shapes))
    return _with_shardings(shapes, sharding.state_shardings(shapes, mesh))


def load_params(
    config: ml_collections.ConfigDict, workdir: str, model, mesh=None, purpose: str = "evaluate"
):
    """`(params, step)` of the newest readable checkpoint in `workdir` (parameters only),
    laid out over `mesh` as in training, or on one device (mesh None). The workdir's config
    must match (`checkpoints.check_config_matches`). In a `gs://` workdir storage that does
    not answer is one line within `train.storage_timeout` (an unreachable endpoint: at once,
    as a ConfigError)."""
    storage_faults.set_limit(config.train.storage_timeout)
    guard = (
        storage_faults.stop_on_fault("reading", workdir, storage.bucket(workdir))
        if storage.is_remote(workdir)
        else contextlib.nullcontext()
    )
    with guard:
        checkpoints.check_config_matches(workdir, config)
        return checkpoints.restore_params(
            workdir, config.train.keep_checkpoints, abstract_params(config, model, mesh), purpose
        )
