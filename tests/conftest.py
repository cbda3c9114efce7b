"""Shared test helpers."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

# One persistent XLA compilation cache for the whole test session, shared by the xdist
# workers and the subprocesses they start (inherited through the environment; set before
# JAX is imported): many tests compile the same small train step again, in a resumed run,
# in a command-line run, in another process. It starts empty, so no result depends on an
# earlier session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="reformer-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # noqa: E402

from reformer.config import load_config_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str | None = None):
    """`get_config()` of configs/<name>.py, as `--config configs/<name>.py[:variant]` would."""
    return load_config_file(os.path.join(REPO, "configs", f"{name}.py"), variant)


def run_module(args: list[str], env: dict | None = None, timeout: int = 300):
    """Runs `python -m <args>` in the repository root; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(script: str, args: list[str], timeout: int = 600):
    """Runs `python scripts/<script> <args>` in the repository root; the CompletedProcess."""
    return subprocess.run(
        [sys.executable, os.path.join("scripts", script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@functools.cache
def load_script(name: str):
    """scripts/<name>.py loaded as a module (once), to test its functions: the scripts are
    plain files run as `python scripts/<name>.py`, not a package on the import path."""
    path = os.path.join(REPO, "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # What dataclasses and pickling look a module up by.
    spec.loader.exec_module(module)
    return module


def read_metrics(workdir: str, split: str = "train") -> list[dict]:
    """The records of one split ("train" or "eval") in WORKDIR/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r["split"] == split]


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in WORKDIR/checkpoints."""
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture
def tiny_config():
    return load_config("tiny")
