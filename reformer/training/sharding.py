"""Device mesh `("data", "fsdp")`, shardings derived from shapes, multi-host start-up and input.

This is `jax.jit` over a `Mesh` with `NamedSharding`s (no `pmap`); it runs the same way on
one CPU, one GPU host or a multi-host TPU pod (after `jax.distributed.initialize()`). The
batch is split over both mesh axes. With `fsdp > 1` each parameter (and its optimizer state)
is split over `fsdp` along one dimension the axis size divides, chosen from its shape.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from reformer.config.validation import mesh_shape

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
    heartbeat_timeout: int = 100,
) -> bool:
    """Joins the processes of a multi-host run; call before any other JAX call.

    With `coordinator_address` (and `num_processes`, `process_id`) given, joins that job
    (multi-node GPU, local tests). Without, joins the job JAX detects (Cloud TPU pod slices,
    SLURM, Open MPI) when it has more than one process. Returns True when a multi-process
    job was joined.
    """
    if coordinator_address or num_processes or process_id is not None:
        if not (coordinator_address and num_processes and process_id is not None):
            raise ValueError(
                "--coordinator_address, --num_processes and --process_id go together: "
                f"got {coordinator_address!r}, {num_processes!r}, {process_id!r}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process_id must be in 0..{num_processes - 1} (--num_processes), "
                f"got {process_id}"
            )
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout,
        )
        return True
    if detected_process_count() > 1:
        jax.distributed.initialize(
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout,
        )
        return True
    return False


def detected_process_count() -> int:
    """Processes of the cluster JAX would detect (Cloud TPU, SLURM, Open MPI); 1 if none."""
    try:  # JAX's own detection; a private module, so fall back quietly if it moves.
        from jax._src.clusters import ClusterEnv
    except ImportError:
        return 1
    for env in ClusterEnv._cluster_types:
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if env.is_env_present():
                return int(env.get_process_count())
        except Exception:  # noqa: BLE001  (an environment that cannot answer is not ours)
            continue
    return 1


def device_name() -> str:
    """The accelerator's name, or "cpu (N cores)", for result records."""
    d = jax.devices()[0]
    return f"cpu ({os.cpu_count()} cores)" if d.platform == "cpu" else d.device_kind


def make_mesh(mesh_config: ml_collections.ConfigDict | None = None, devices=None) -> Mesh:
    """The `("data", "fsdp")` mesh of `config.mesh` over all devices (of every host).

    Without a mesh config every device is on `data`. Devices are laid out in JAX's order
    (by process), so each process's devices are one block of the batch.
    """
    devices = jax.devices() if devices is None else list(devices)
    data, fsdp = (-1, 1) if mesh_config is None else (mesh_config.data, mesh_config.fsdp)
    shape = mesh_shape(data, fsdp, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device (`data` and `fsdp`), the rest whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Where an array of `shape` is split over `fsdp`: its largest dimension the axis size
    divides (the first of equals); replicated when none does or `fsdp` is 1."""
    if fsdp == 1:
        return P()
    best = None
    for i, n in enumerate(shape):
        if n % fsdp == 0 and (best is None or n > shape[best]):
            best = i
    if best is None:
        return P()
    return P(*([None] * best), FSDP_AXIS)


def state_shardings(abstract_tree, mesh: Mesh):
    """NamedShardings for a pytree of arrays (or shapes): FSDP-split by `fsdp_spec`."""
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda a: NamedSharding(mesh, fsdp_spec(tuple(a.shape), fsdp)), abstract_tree
    )


def process_rows(mesh: Mesh, global_batch: int) -> slice:
    """The rows of a global batch that this process's devices hold (one contiguous block).

    `make_array_from_process_local_data` places a process's rows by the mesh's device
    order, so each process must read exactly these rows.
    """
    index_map = batch_sharded(mesh).addressable_devices_indices_map((global_batch,))
    starts = sorted({idx[0].indices(global_batch)[:2] for idx in index_map.values()})
    lo, hi = starts[0][0], starts[-1][1]
    covered = sum(b - a for a, b in starts)
    if covered != hi - lo:
        raise ValueError(
            f"this process's devices hold rows {starts} of the batch, not one block; "
            "the mesh must give each process a contiguous part of the batch"
        )
    return slice(lo, hi)


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each host's rows into global arrays sharded over the batch axes."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
