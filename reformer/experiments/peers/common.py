"""What every implementation of the peers benchmark shares: the model's settings and the
batch, and how a worker process reports its device, memory and library versions."""

from __future__ import annotations

import math
import os
import platform
import resource
import sys
from importlib import metadata

IMPLS = ("ours", "ours_plain", "hf", "lucidrains", "trax")
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}
TORCH_IMPLS = ("hf", "lucidrains")
VOCAB = 258
PACKAGES = {
    "jax": "jax",
    "torch": "torch",
    "transformers": "transformers",
    "reformer_pytorch": "reformer-pytorch",
    "trax": "trax",
}
# The model's settings: command-line options of the benchmark and fields of every record.
SETTINGS = ("n_layers", "d_model", "d_ff", "n_heads", "d_head", "chunk", "n_hashes", "batch")


def axial_shape(seq_len: int) -> tuple[int, int]:
    """`(a, b)` with `a * b == seq_len` and `b` the largest divisor not above sqrt(seq_len)."""
    b = max(d for d in range(1, math.isqrt(seq_len) + 1) if seq_len % d == 0)
    return seq_len // b, b


def axial_dims(d_model: int) -> tuple[int, int]:
    return d_model // 4, d_model - d_model // 4


def n_buckets(args, seq_len: int) -> int:
    """Buckets per hash round: one per chunk, in every implementation."""
    return seq_len // args.chunk


def tokens(args, seq_len: int):
    """The batch every implementation trains on: random byte ids 2..257 (seeded)."""
    import numpy as np

    return np.random.default_rng(0).integers(2, VOCAB, (args.batch, seq_len), dtype=np.int32)


def versions() -> dict:
    out = {}
    for key, dist in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux.


def peak_device_bytes(impl: str) -> int | None:
    """Peak GPU memory this process allocated (None on a CPU)."""
    if impl in TORCH_IMPLS:
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    if "jax" not in sys.modules:
        return None
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    return int((device.memory_stats() or {}).get("peak_bytes_in_use", 0)) or None


def jax_device_name() -> str:
    import jax

    device = jax.devices()[0]
    return "cpu" if device.platform == "cpu" else device.device_kind


def jax_setup(args) -> None:
    """On a GPU: check that JAX has one, and set the precision of float32 products."""
    import jax

    if args.device == "gpu":
        try:
            jax.devices("cuda")
        except (RuntimeError, AssertionError) as e:
            why = f": {e}" if str(e) else ""
            raise RuntimeError(
                "--device gpu: JAX finds no CUDA device (install jax[cuda12] or jax[cuda13] "
                f"on a machine with an NVIDIA GPU){why}"
            ) from None
        jax.config.update(
            "jax_default_matmul_precision",
            "tensorfloat32" if args.matmul_precision == "tf32" else "highest",
        )


def torch_setup(args) -> tuple[int, str, str]:
    """Threads, the torch device ("cpu" or "cuda") and its name for the records."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    if args.device == "cpu":
        return torch.get_num_threads(), "cpu", "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("--device gpu: this PyTorch sees no CUDA device")
    torch.set_float32_matmul_precision("high" if args.matmul_precision == "tf32" else "highest")
    return torch.get_num_threads(), "cuda", torch.cuda.get_device_name()


def torch_step(model, opt, loss_of, device: str):
    """One forward, backward and Adam step of a PyTorch model, waited for on the GPU; the
    step returns its loss."""
    import torch

    def step() -> float:
        loss = loss_of(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step
