"""The reproduction scripts' train-then-score step: one model trained through the normal
trainer (resuming its workdir), its parameters loaded and scored; the script stops when
training was stopped before the last step."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any


def stop_if_unfinished(name: str, step: int, num_steps: int) -> None:
    """Exits (non-zero, resumable) when a run named `name` ended at `step` < `num_steps`:
    the trainer returns normally after SIGTERM or Ctrl-C with its checkpoint saved."""
    if step < num_steps:
        sys.exit(f"Stopped in {name} at step {step}; rerun the command to resume.")


def train(config, workdir: str) -> float:
    """Trains `config` in `workdir` (from its last checkpoint, if any); the wall minutes."""
    from reformer import train as train_command

    start = time.time()
    train_command.train_and_evaluate(config, workdir)
    return (time.time() - start) / 60


@dataclasses.dataclass
class TrainedRun:
    """A trained `model`'s parameters at `step`, on `mesh`; `minutes` of the train call."""

    model: Any
    params: Any
    step: int
    mesh: Any
    minutes: float

    def score(self, config, eval_fn=None) -> dict:
        """`evaluation.checkpoint.evaluate_params` of these parameters, as `config.eval`
        says; `eval_fn` (`eval_fn(config)`) reuses a compiled evaluation step."""
        from reformer.evaluation import checkpoint

        return checkpoint.evaluate_params(
            config, self.model, self.params, self.step, self.mesh, eval_fn
        )

    def eval_fn(self, config):
        """The jitted evaluation step of `config.eval` for these parameters (any split)."""
        from reformer.evaluation import checkpoint

        return checkpoint.jitted_eval_fn(config, self.model, self.params, self.mesh)


def train_and_load(config, workdir: str, name: str) -> TrainedRun:
    """Trains `config` in `workdir`, then loads its latest parameters; exits (see
    `stop_if_unfinished`) when they are short of `train.num_steps`."""
    from reformer.training import sharding, state

    minutes = train(config, workdir)
    mesh = sharding.make_mesh()
    model = state.make_model(config)
    params, step = state.load_params(config, workdir, model, mesh)
    stop_if_unfinished(name, step, config.train.num_steps)
    return TrainedRun(model, params, step, mesh, minutes)
