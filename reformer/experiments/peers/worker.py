"""A peers benchmark worker: builds one implementation's train step, runs the warm-up steps
and answers the parent's line protocol (`step`, `quit`) on stdout."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable

from reformer.experiments.peers.common import peak_device_bytes, peak_rss_bytes, versions

# impl: (module of this package, builder, keyword arguments)
BUILDERS = {
    "ours": ("ours", "build_ours", {"reversible": True}),
    "ours_plain": ("ours", "build_ours", {"reversible": False}),
    "hf": ("huggingface", "build_hf", {}),
    "lucidrains": ("lucidrains", "build_lucidrains", {}),
    "trax": ("trax_lm", "build_trax", {}),
}


def build(impl: str, args, seq_len: int):
    """(step, info) of `impl`; its module is imported only here (each peer's libraries are
    installed apart)."""
    if impl not in BUILDERS:
        raise ValueError(f"unknown implementation {impl!r}")
    module, builder, kwargs = BUILDERS[impl]
    fn = getattr(importlib.import_module(f"reformer.experiments.peers.{module}"), builder)
    return fn(args, seq_len, **kwargs)


def _error(e: Exception) -> dict:
    import traceback

    traceback.print_exc()
    return {"error": f"{type(e).__name__}: {e}"}


def _ready(args, send) -> Callable[[], float]:
    """Builds the step and runs the warm-up; sends `ready` (or the error, then exits)."""
    try:
        step, info = build(args.worker, args, args.seq_len)
        warmup, losses = [], []
        for _ in range(args.warmup):
            start = time.perf_counter()
            losses.append(step())
            warmup.append(time.perf_counter() - start)
        info.update(warmup_seconds=warmup, losses=losses, versions=versions())
        send({"ready": True, **info})
    except Exception as e:  # noqa: BLE001  (reported to the parent, which records it)
        send(_error(e))
        sys.exit(1)
    return step


def worker_main(args) -> None:
    """Serves the line protocol; only protocol lines reach the real stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Library output (Python or C) written to stdout goes to stderr.
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    step = _ready(args, send)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            try:
                start = time.perf_counter()
                loss = step()
                send({"seconds": time.perf_counter() - start, "loss": loss})
            except Exception as e:  # noqa: BLE001
                send(_error(e))
                sys.exit(1)
        elif command == "quit":
            break
    send({"peak_rss_bytes": peak_rss_bytes(), "peak_device_bytes": peak_device_bytes(args.worker)})
