"""bfloat16 training matches float32 training on real bytes (a long test)."""

from __future__ import annotations

import pytest

from reformer.train import train_and_evaluate
from tests.conftest import load_config, read_metrics
from tests.test_text_data import PREFIX


@pytest.mark.slow
def test_bfloat16_training_ends_within_two_percent_of_float32(tmp_path):
    """200 steps of configs/enwik8.py:cpu on the shared enwik8 prefix, same seed and data."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = load_config("enwik8", "cpu")
        config.data.path = PREFIX
        config.model.dtype = dtype
        t = config.train
        t.num_steps, t.log_every, t.eval_every, t.checkpoint_every = 200, 50, 200, 200
        workdir = str(tmp_path / dtype)
        train_and_evaluate(config, workdir)
        losses[dtype] = read_metrics(workdir, "eval")[-1]["loss"]
    assert abs(losses["bfloat16"] - losses["float32"]) <= 0.02 * losses["float32"], losses
