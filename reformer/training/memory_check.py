"""A compiled step that cannot fit the device is refused before it runs, with what it needs.

XLA's `memory_analysis()` of the compiled step gives the bytes one device holds while it
runs (arguments + outputs + temporaries - donated buffers reused as outputs). An accelerator
reports its own limit (`device.memory_stats()["bytes_limit"]`); the CPU devices of a process
share the host's memory (the smaller of its physical memory and the cgroup limit), so their
needs add up. Without this check an oversized run dies at its first step (an accelerator's
out-of-memory error deep inside JAX) or, on a CPU host, by the kernel's out-of-memory killer
without a word.
"""

from __future__ import annotations

import os

import jax

from reformer.errors import ConfigError

GIB = 1024**3
# cgroup v2 and v1 memory limits (a container's share of the host).
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def needed_bytes(compiled) -> int | None:
    """Bytes one device holds while `compiled` runs, or None when XLA does not say."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return None
    if m is None:
        return None
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
        + m.generated_code_size_in_bytes
    )


def host_memory_bytes() -> int | None:
    """The memory this process's host offers: physical memory, or a smaller cgroup limit."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) if limits else None


def device_limit(device) -> tuple[int | None, str]:
    """`(bytes, what)`: the memory available to the computations on `device`'s kind."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"one {device.device_kind}"
    return host_memory_bytes(), "this host"


def check_fits(compiled, what: str = "the train step") -> None:
    """Raises ConfigError when `compiled` needs more memory than its devices have."""
    per_device = needed_bytes(compiled)
    device = jax.local_devices()[0]
    limit, where = device_limit(device)
    if per_device is None or limit is None:
        return
    users = jax.local_device_count() if device.platform == "cpu" else 1
    need = per_device * users
    if need <= limit:
        return
    share = f" ({users} CPU devices x {per_device / GIB:.2f} GiB)" if users > 1 else ""
    raise ConfigError(
        f"{what} needs {need / GIB:.2f} GiB{share} by XLA's memory analysis, but {where} has "
        f"{limit / GIB:.2f} GiB: lower train.batch_size or data.seq_len, raise "
        "train.grad_accum_steps, use model.dtype='bfloat16', a smaller model, or more devices "
        "with mesh.fsdp"
    )
