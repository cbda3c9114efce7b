"""End to end: training runs, resumes where it stopped, and stops cleanly."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from reformer.config import ConfigError
from reformer.train import train_and_evaluate
from tests.conftest import REPO, checkpoint_steps, load_config, read_metrics, run_module


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny config trained straight to 20 steps."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    result = train_and_evaluate(load_config("tiny"), workdir)
    return workdir, result


def test_writes_metrics_checkpoints_and_events(uninterrupted):
    workdir, result = uninterrupted
    train = read_metrics(workdir)
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    for r in train:
        for key in (
            "loss",
            "accuracy",
            "bits_per_token",
            "grad_norm",
            "learning_rate",
            "steps_per_sec",
            "tokens_per_sec",
        ):
            assert np.isfinite(r[key]), key
    assert [r["step"] for r in read_metrics(workdir, "eval")] == [10, 20]
    assert checkpoint_steps(workdir) == [10, 20]
    assert os.listdir(os.path.join(workdir, "tb"))  # TensorBoard event file.
    assert set(result) >= {"loss", "accuracy", "step"} and result["step"] == 20


def test_loss_falls(tmp_path):
    config = load_config("tiny")
    config.train.num_steps = 60
    config.train.log_every = 10
    config.train.eval_every = 0
    config.train.checkpoint_every = 60
    train_and_evaluate(config, str(tmp_path))
    losses = [r["loss"] for r in read_metrics(str(tmp_path))]
    assert losses[-1] < losses[0] - 0.3, losses


def test_resumes_where_it_stopped_and_matches_an_uninterrupted_run(uninterrupted, tmp_path):
    straight_dir, _ = uninterrupted
    workdir = str(tmp_path)
    config = load_config("tiny")
    config.train.num_steps = 10
    train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir) == [10]
    config.train.num_steps = 20
    train_and_evaluate(config, workdir)
    resumed = read_metrics(workdir)
    # Both parts are in metrics.jsonl and the second part starts after step 10, not at 0.
    assert [r["step"] for r in resumed] == [5, 10, 15, 20]
    assert checkpoint_steps(workdir) == [10, 20]
    # Same parameters, data position and rngs: the losses equal the uninterrupted run's.
    straight = read_metrics(straight_dir)
    np.testing.assert_allclose(
        [r["loss"] for r in resumed], [r["loss"] for r in straight], rtol=1e-6
    )


def test_finished_run_does_not_train_again(uninterrupted, tmp_path):
    straight_dir, _ = uninterrupted
    before = read_metrics(straight_dir)
    train_and_evaluate(load_config("tiny"), straight_dir)
    assert read_metrics(straight_dir) == before
    assert checkpoint_steps(straight_dir) == [10, 20]


def test_refuses_to_resume_a_different_model(uninterrupted):
    workdir, _ = uninterrupted
    config = load_config("tiny")
    config.model.d_model = 64
    config.train.num_steps = 30
    with pytest.raises(ConfigError, match="config.model.d_model: checkpoint has 32"):
        train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir) == [10, 20]  # The good checkpoints are untouched.


def test_divergence_stops_with_a_clear_error(tmp_path):
    config = load_config("tiny")
    config.optimizer.learning_rate = 1e30
    config.optimizer.clip_norm = 0.0
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_and_evaluate(config, str(tmp_path))
    steps = checkpoint_steps(str(tmp_path)) if os.path.exists(tmp_path / "checkpoints") else []
    assert steps == [], "a diverged state was checkpointed"


@pytest.mark.parametrize(
    "sig, message", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")], ids=["term", "int"]
)
def test_stop_request_saves_and_exits_cleanly(sig, message, tmp_path):
    """SIGTERM (preemption) or one Ctrl-C: a checkpoint at the current step, exit status 0."""
    workdir = str(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "reformer.train",
        "--config",
        "configs/tiny.py",
        "--workdir",
        workdir,
        "--config.train.num_steps=100000",
        "--config.train.log_every=5",
        "--config.train.checkpoint_every=100000",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        if "step " in line and "/100000" in line:
            break
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert message in out and "Stopped at step" in out
    steps = checkpoint_steps(workdir)
    assert len(steps) == 1 and 5 <= steps[0] < 100000


def test_command_line_run_and_resume(tmp_path):
    """The README's flow: run N steps, then the same command with 2N resumes at N."""
    workdir = str(tmp_path / "w")
    args = ["reformer.train", "--config", "configs/tiny.py", "--workdir", workdir]
    first = run_module([*args, "--config.train.num_steps=10"])
    assert first.returncode == 0, first.stderr
    assert "Starting from scratch" in first.stdout
    second = run_module([*args, "--config.train.num_steps=20"])
    assert second.returncode == 0, second.stderr
    assert "Resumed from" in second.stdout and "at step 10" in second.stdout
    assert [r["step"] for r in read_metrics(workdir)] == [5, 10, 15, 20]


def test_data_parallel_over_four_devices_matches_one(uninterrupted, tmp_path):
    """Batch sharded over 4 (fake CPU) devices gives the single-device losses."""
    straight_dir, _ = uninterrupted
    workdir = str(tmp_path / "w4")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    run = run_module(
        ["reformer.train", "--config", "configs/tiny.py", "--workdir", workdir], env=env
    )
    assert run.returncode == 0, run.stderr
    assert "4 device(s)" in run.stdout
    np.testing.assert_allclose(
        [r["loss"] for r in read_metrics(workdir)],
        [r["loss"] for r in read_metrics(straight_dir)],
        rtol=1e-4,
    )
    bad = run_module(
        [
            "reformer.train",
            "--config",
            "configs/tiny.py",
            "--workdir",
            workdir,
            "--config.train.batch_size=6",
        ],
        env=env,
    )
    assert bad.returncode == 2
    assert "config.train.batch_size: 6 is not divisible by the number of devices (4)" in (
        bad.stderr
    )


def test_second_ctrl_c_exits_at_once(monkeypatch):
    """The first Ctrl-C asks for a save-and-stop; the second exits immediately (status 130)."""
    from reformer.training import preemption

    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(preemption.os, "_exit", fake_exit)
    stop = preemption.StopRequests()
    stop._on_interrupt(signal.SIGINT, None)
    assert stop.should_stop(1) and not exits
    with pytest.raises(SystemExit):
        stop._on_interrupt(signal.SIGINT, None)
    assert exits == [130]
