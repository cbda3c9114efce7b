"""Device mesh and shardings: batch split over the `data` axis, parameters replicated.

This is `jax.jit` over a `Mesh` with `NamedSharding`s (no `pmap`); it runs the same way on
one CPU, one GPU host or a multi-host TPU pod (after `jax.distributed.initialize()`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def device_name() -> str:
    """The accelerator's name, or "cpu (N cores)", for result records."""
    d = jax.devices()[0]
    return f"cpu ({os.cpu_count()} cores)" if d.platform == "cpu" else d.device_kind


def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh over all devices (of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each host's rows into global arrays sharded over the batch axis."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
