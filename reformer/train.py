"""Entry point: `python -m reformer.train --config configs/X.py --workdir DIR`.

Config fields are overridden as `--config.train.num_steps=20`. In Python:
`reformer.train.train_and_evaluate(config, workdir)`. A run resumes from the
latest checkpoint in DIR, which may be local or `gs://BUCKET/path` (Cloud Storage). The flags
it shares with `reformer.evaluate` and `reformer.sample`, multi-process ones included, are in
`reformer/cli.py`; a multi-host run starts one process per host (docs/scaling.md).
"""

from __future__ import annotations

if __name__ == "__main__":  # One process of several: become its thin parent before JAX loads.
    from reformer.training import supervise

    supervise.exit_if_parent("train")

import jax
import ml_collections

from reformer import cli
from reformer.console import log
from reformer.evaluation.scoring import make_eval_fn
from reformer.training import loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to `config.train.num_steps` (resuming from the workdir's latest checkpoint),
    evaluating under `config.eval` as it goes; returns the last evaluation's metrics ({} when
    the run had already finished)."""
    return loop.train(config, workdir, make_eval_fn)


def train(config, workdir: str) -> None:
    log(f"JAX {jax.__version__}; {jax.device_count()} device(s): {jax.devices()[:8]}")
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    cli.run("train", train)
