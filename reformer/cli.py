"""What the entry points share: the flags `--config`, `--workdir` and the multi-process flags,
their parsing, and how a bad value ends a command (one line, the usage line, status 2).

    python -m reformer.train    --config configs/X.py --workdir DIR
    python -m reformer.evaluate --config configs/X.py --workdir DIR
    python -m reformer.sample   --config configs/X.py --workdir DIR --prompt TEXT

`--workdir` and `--config` may be `gs://BUCKET/...` (a config file there is read through a
local copy). A multi-process run starts one process per host: on Cloud TPU pod slices, SLURM
and Open MPI the processes find each other by themselves; elsewhere give every process
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (docs/scaling.md).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from reformer import storage
from reformer.config import validate
from reformer.config.schema import fields as config_fields
from reformer.config.validation import unknown_field_problem
from reformer.errors import ConfigError
from reformer.training import sharding, supervise

CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, e.g. configs/duplication.py or configs/duplication.py:paper "
    "(local or gs://).",
    lock_config=True,
)
WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and metrics (local or gs://BUCKET/path)."
)
flags.mark_flags_as_required(["config", "workdir"])
COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process runs: HOST:PORT of process 0's coordinator (the same in every process).",
)
NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process runs: how many processes form the job."
)
PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process runs: this process's index, 0..num_processes-1."
)
INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds to wait for all processes to join."
)
HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "Seconds after which a silent process counts as dead."
)

# A collective that failed because a peer process is gone (Gloo on CPU).
PEER_FAILURE = re.compile(r"Connection (closed|reset) by peer|Gloo .* failed")

# What each entry point needs besides the shared flags, for its usage line.
USAGE_EXTRA = {
    "train": "",
    "evaluate": "",
    "sample": " --prompt TEXT",
    "translate": " --text SENTENCE",
    "export": " --out DIR",
    "inspect": " --layer N --out DIR [--text T | --ids 1,2 | --example K]",
}


def exit_with_error(program: str, message: str) -> None:
    print(
        f"error: {message}\nUsage: python -m reformer.{program} --config configs/X.py "
        f"--workdir DIR{USAGE_EXTRA[program]} [--config.group.field=value ...]",
        file=sys.stderr,
    )
    sys.exit(2)


def _local_config_file(argv: list[str]) -> list[str]:
    """`argv` with a `--config gs://...` file replaced by a local copy of it (the config
    loader reads local files only); the `:variant` suffix is kept."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            index, value, prefix = i + 1, out[i + 1], ""
        elif arg.startswith("--config="):
            index, value, prefix = i, arg.split("=", 1)[1], "--config="
        else:
            continue
        if not storage.is_remote(value):
            continue
        remote, _, variant = value[len(storage.REMOTE) :].partition(":")
        remote = storage.REMOTE + remote
        local = os.path.join(tempfile.mkdtemp(prefix="reformer_config_"), os.path.basename(remote))
        try:
            with open(local, "w") as f:
                f.write(storage.read_text(remote))
        except FileNotFoundError as e:
            raise OSError(f"no such file: {remote}") from e
        out[index] = prefix + local + (f":{variant}" if variant else "")
    return out


def flags_parser(program: str) -> Callable[[list[str]], list[str]]:
    """absl's `flags_parser` for `program`: parses the flags and loads the config; a bad flag,
    config file or override exits with a short message, not a traceback."""

    def parse(argv: list[str]) -> list[str]:
        try:
            argv = _local_config_file(argv)
            argv, unknown = _split_unknown_overrides(argv)
            sys.argv[1:] = argv[1:]  # ml_collections reads the overrides from sys.argv.
            rest = flags.FLAGS(argv)
            _ = CONFIG.value.to_dict()  # Loading the file raises here if it fails.
            if unknown:  # Named together with every bad value of the other fields.
                validate(CONFIG.value, num_devices=None, extra_problems=unknown)
            storage.check(WORKDIR.value, "--workdir")
            return rest
        except ConfigError as e:
            exit_with_error(program, str(e))
        except Exception as e:  # noqa: BLE001  (absl and ml_collections raise several types)
            exit_with_error(program, _flag_error_message(e, argv))

    return parse


def _overrides(argv: list[str]) -> list[tuple[int, int, str]]:
    """`(first, end, field)` of each `--config.group.field[=value]` argument of `argv` (a
    value given as the next argument belongs to it: `end` is past it)."""
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--config.") and i > 0:
            name, has_value, _ = arg[len("--config.") :].partition("=")
            end = i + 1 if has_value or i + 1 == len(argv) else i + 2
            out.append((i, end, name))
    return out


def _split_unknown_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """`argv` without the overrides of fields the schema does not have, and their problems
    (the flags parser would stop at the first one)."""
    known = {f"{group}.{name}" for group, name, _ in config_fields()}
    unknown = [(i, end, n) for i, end, n in _overrides(argv) if n not in known]
    drop = {j for i, end, _ in unknown for j in range(i, end)}
    kept = [a for j, a in enumerate(argv) if j not in drop]
    return kept, [unknown_field_problem(n) for _, _, n in unknown]


def _flag_error_message(e: Exception, argv: list[str]) -> str:
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
    return message.replace("\\'", "'")


def initialize_distributed(program: str) -> None:
    """Joins a multi-process job from the flags or the detected cluster (before any other
    JAX call); a bad combination of flags exits with a message."""
    try:
        sharding.initialize_distributed(
            COORDINATOR.value,
            NUM_PROCESSES.value,
            PROCESS_ID.value,
            initialization_timeout=INIT_TIMEOUT.value,
            heartbeat_timeout=HEARTBEAT_TIMEOUT.value,
        )
    except ValueError as e:
        exit_with_error(program, str(e))


def _multi_process() -> bool:
    """Whether this command is one process of several (from the flags or a detected cluster)."""
    if NUM_PROCESSES.value is not None:
        return NUM_PROCESSES.value > 1
    return sharding.detected_process_count() > 1


def run(
    program: str,
    body: Callable[[ml_collections.ConfigDict, str], object],
    distributed: bool = True,
) -> None:
    """Runs `body(config, workdir)` as the command `program`: flags parsed, the multi-process
    job joined (`distributed`), and a ConfigError printed as one line with exit status 2."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        if distributed and not os.environ.get(supervise.ENV) and _multi_process():
            # This process becomes the thin parent of the real one (reformer/training/supervise.py).
            sys.exit(
                supervise.supervise(
                    f"reformer.{program}",
                    sys.argv[1:],
                    PROCESS_ID.value,
                    NUM_PROCESSES.value,
                    WORKDIR.value,
                )
            )
        logging.set_verbosity(logging.WARNING)  # Keep library INFO logs (orbax) quiet.
        if distributed:
            initialize_distributed(program)
        try:
            body(CONFIG.value, WORKDIR.value)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except jax.errors.JaxRuntimeError as e:
            if not (os.environ.get(supervise.ENV) and PEER_FAILURE.search(str(e))):
                raise
            # A collective whose peer is gone. JAX's coordination service ends this process
            # shortly (at exit, in its shutdown barrier), and the parent names the lost one.
            first = str(e).strip().splitlines()[0][:200]
            print(f"error: a collective between processes failed ({first})", file=sys.stderr)
            sys.exit(1)

    app.run(main, flags_parser=flags_parser(program))
