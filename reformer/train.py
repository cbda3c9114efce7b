"""Entry point: `python -m reformer.train --config configs/X.py --workdir DIR`.

Config fields are overridden as `--config.train.num_steps=20`. A run resumes from the
latest checkpoint in DIR. A multi-host run starts one process per host: on Cloud TPU pod
slices, SLURM and Open MPI the processes find each other by themselves; elsewhere (several
GPU nodes, or several processes on one machine) give every process
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (see docs/scaling.md).
"""

from __future__ import annotations

import os
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from reformer import sharding, trainer
from reformer.config import ConfigError
from reformer.metrics import log

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, e.g. configs/duplication.py or configs/duplication.py:paper.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process runs: HOST:PORT of process 0's coordinator (the same in every process).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process runs: how many processes form the job."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process runs: this process's index, 0..num_processes-1."
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds to wait for all processes to join."
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "Seconds after which a silent process counts as dead."
)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags and loads the config; a bad flag, config file or override exits with a
    short message, not a traceback."""
    try:
        rest = flags.FLAGS(argv)
        _ = _CONFIG.value.to_dict()  # Loading the file raises here if it fails.
        return rest
    except Exception as e:  # noqa: BLE001  (absl and ml_collections raise several types)
        lines = [ln.strip() for ln in str(e).replace("\\n", "\n").splitlines() if ln.strip()]
        message = lines[-1] if lines else type(e).__name__
        if "Traceback" in str(e) or isinstance(e, OSError):  # A config file that fails.
            message = f"--config: {message}"
        elif isinstance(e, AttributeError | KeyError):
            key = re.search(r"(\w+)", str(e))
            bad = [
                a.split("=")[0]
                for a in argv[1:]
                if a.startswith("--config.") and key and f".{key[1]}" in a.split("=")[0]
            ]
            detail = message.strip("'\"")
            message = f"{bad[0] if bad else '--config'}: unknown config field. {detail}"
        _exit_with_error(message.replace("\\'", "'"))


def _exit_with_error(message: str) -> None:
    program = next(
        (p for p in ("evaluate", "sample") if p in os.path.basename(sys.argv[0])), "train"
    )
    extra = " --prompt TEXT" if program == "sample" else ""
    print(
        f"error: {message}\nUsage: python -m reformer.{program} --config configs/X.py "
        f"--workdir DIR{extra} [--config.group.field=value ...]",
        file=sys.stderr,
    )
    sys.exit(2)


def initialize_distributed() -> None:
    """Joins a multi-process job from the flags or the detected cluster (before any other
    JAX call); a bad combination of flags exits with a message."""
    try:
        sharding.initialize_distributed(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            initialization_timeout=_INIT_TIMEOUT.value,
            heartbeat_timeout=_HEARTBEAT_TIMEOUT.value,
        )
    except ValueError as e:
        _exit_with_error(str(e))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # Keep library INFO logs (orbax) off the console.
    initialize_distributed()
    log(f"JAX {jax.__version__}; {jax.device_count()} device(s): {jax.devices()[:8]}")
    try:
        trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
