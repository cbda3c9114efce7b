"""Entry point: `python -m reformer.train --config configs/X.py --workdir DIR`.

Config fields are overridden as `--config.train.num_steps=20`. A run resumes from the
latest checkpoint in DIR.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from reformer import trainer
from reformer.config import ConfigError
from reformer.metrics import log

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/duplication.py or "
    "configs/duplication.py:paper.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # Keep library INFO logs (orbax) off the console.
    log(f"JAX {jax.__version__}; devices: {jax.devices()}")
    try:
        trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
