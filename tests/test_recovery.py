"""Recovery: training killed at random moments (SIGTERM, `kill -9`) and restarted ends
bit-identical to an uninterrupted run; a truncated newest checkpoint, an unfinished save and
a diverging resume never lose the last good checkpoint."""

from __future__ import annotations

import glob
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from reformer.config import ConfigError
from reformer.train import train_and_evaluate
from reformer.training import sharding
from reformer.training.metrics import keep_records_up_to
from reformer.training.state import load_params, make_model
from tests.conftest import REPO, checkpoint_steps, load_config, read_metrics

SEED = int(os.environ.get("RECOVERY_SEED", "25"))  # Override to soak other moments.
NUM_STEPS = 100  # Steps of the killed run; each takes milliseconds on the tiny model.
CHECKPOINT_EVERY = 5
RUN_TIMEOUT = 240  # Seconds any one training process may take (a cold compile included).

# A failed restore (the truncated checkpoint, an optimizer of another shape) leaves orbax's
# reads of the other arrays as coroutines that complain when garbage-collected, possibly
# during a later test of this file; harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

PROGRESS = re.compile(r"\] step +(\d+)/(\d+) \|")
RESUMED = re.compile(r"Resumed from .* at step (\d+)\.")


def final_params(workdir, num_steps):
    config = load_config("tiny")
    config.train.num_steps = num_steps
    params, step = load_params(config, workdir, make_model(config), sharding.make_mesh())
    return jax.device_get(params), step


def assert_trees_equal(actual, expected):
    paths_a, tree_a = jax.tree_util.tree_flatten_with_path(actual)
    paths_e, tree_e = jax.tree_util.tree_flatten_with_path(expected)
    assert tree_a == tree_e
    for (path, a), (_, e) in zip(paths_a, paths_e, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=str(path))


class Training:
    """`python -m reformer.train ...` with its stdout read line by line on a thread, so the
    test can wait for a line with a deadline and signal the process at that moment."""

    def __init__(self, args: list[str], env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "reformer.train", *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def next_line(self, timeout: float) -> str | None:
        """The next line; None at the end of the output or when `timeout` passes first."""
        if self._eof:
            return None
        try:
            line = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if line is None:
            self._eof = True
            return None
        self.lines.append(line)
        return line

    def wait_for(self, predicate, timeout: float = RUN_TIMEOUT) -> str:
        """Reads until a line satisfies `predicate`; fails at the end of the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.next_line(deadline - time.monotonic())
            if line is None and self._eof:
                break
            if line is not None and predicate(line):
                return line
        raise AssertionError(f"no expected line (rc={self.proc.poll()}):\n{self.output}")

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        """Reads the rest of the output and waits for the exit code."""
        deadline = time.monotonic() + timeout
        while not self._eof and time.monotonic() < deadline:
            self.next_line(deadline - time.monotonic())
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 1.0))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> Training:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # Never leave a training process behind.
            self.proc.kill()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


def signal_plan(rng: random.Random) -> list[tuple[str, str, float, float]]:
    """(signal, moment, parameter, delay) for the three interruptions, in a seeded random order.

    Moments: "line" (after the k-th progress line of that run, plus up to 30 ms), "save"
    (right after the progress line of a checkpoint step, while its save is being written) and
    "clock" (t seconds after the start: importing, compiling, restoring or training).
    SIGTERM always comes during training, where the loop's handler is installed.
    """
    kill_moments = ["save", rng.choice(["clock", "line"])]
    rng.shuffle(kill_moments)
    plan = [("SIGTERM", "line")] + [("SIGKILL", m) for m in kill_moments]
    rng.shuffle(plan)
    parameters = {"line": lambda: rng.randint(1, 20), "save": lambda: rng.randint(1, 15)}
    parameters["clock"] = lambda: rng.uniform(0.3, 2.5)
    delay = {"line": lambda: rng.uniform(0.0, 0.03), "save": lambda: 0.0, "clock": lambda: 0.0}
    return [(sig, moment, parameters[moment](), delay[moment]()) for sig, moment in plan]


def interrupt(run: Training, sig: str, moment: str, parameter: float, delay: float) -> str:
    """Waits for the planned moment of `run`, signals it; describes where it fell."""
    if moment == "clock":  # At t seconds, or at the 20th step if training gets there first.
        deadline = run.started + parameter
        while (line := run.next_line(deadline - time.monotonic())) is not None:
            if (m := PROGRESS.search(line)) and int(m[1]) >= resumed_at(run) + 20:
                break
    else:
        start = resumed_at(run, wait=True)
        k = int(parameter)
        if sig == "SIGTERM":  # Leave enough steps that the run is still training then.
            k = max(1, min(k, NUM_STEPS - start - 40))

        def due(line):
            m = PROGRESS.search(line)
            if not m:
                return False
            step = int(m[1])
            if moment == "save":
                return step >= start + k and step % CHECKPOINT_EVERY == 0
            return step >= start + k

        run.wait_for(due)
        time.sleep(delay)
    assert run.proc.poll() is None, f"the run ended before its {sig}:\n{run.output}"
    run.proc.send_signal(signal.SIGTERM if sig == "SIGTERM" else signal.SIGKILL)
    steps = [int(m[1]) for m in map(PROGRESS.search, run.lines) if m]
    return (
        f"{sig} at {moment}={parameter:.3g}: after {time.monotonic() - run.started:.2f} s, "
        f"resumed at {resumed_at(run)}, last progress line {steps[-1] if steps else None}"
    )


def resumed_at(run: Training, wait: bool = False) -> int | None:
    """The step `run` resumed from (0 from scratch); None when it has not said yet."""
    if wait:
        run.wait_for(lambda ln: "Resumed from" in ln or "Starting from scratch" in ln)
    for line in run.lines:
        if "Starting from scratch" in line:
            return 0
        if m := RESUMED.search(line):
            return int(m[1])
    return None


def test_killed_and_restarted_training_matches_an_uninterrupted_run(tmp_path):
    """SIGTERM once and `kill -9` twice at seeded random moments, a restart after each: the
    parameters end bit-identical to an uninterrupted run and every step is logged once."""
    # A compilation cache shared by the runs turns each restart's compile into a load. The
    # uninterrupted run fills it before any kill, so no kill can leave an entry half-written.
    env = {
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }

    def args(workdir):
        return [
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(workdir),
            f"--config.train.num_steps={NUM_STEPS}",
            "--config.train.log_every=1",
            f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
            "--config.train.eval_every=0",
        ]

    straight, workdir = tmp_path / "straight", tmp_path / "interrupted"
    with Training(args(straight), env) as run:
        assert run.finish() == 0, run.output
        assert "Starting from scratch" in run.output

    outputs, events = [], []
    for sig, *moment in signal_plan(random.Random(SEED)):
        latest = max(checkpoint_steps(workdir), default=0) if workdir.exists() else 0
        with Training(args(workdir), env) as run:
            events.append(interrupt(run, sig, *moment))
            rc = run.finish()
            outputs.append(run.output)
            tmp_dirs = [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]
            events[-1] += f"; checkpoints {checkpoint_steps(workdir)}, unfinished {tmp_dirs}"
        # A restart resumes from the newest finished checkpoint (if it got that far).
        assert resumed_at(run) in (None, latest), events
        if sig == "SIGTERM":
            assert rc == 0, run.output
            assert "SIGTERM" in run.output, run.output
            stopped = re.search(r"Stopped at step (\d+); checkpoint saved", run.output)
            assert stopped and max(checkpoint_steps(workdir)) == int(stopped[1]), run.output
        else:
            assert rc == -signal.SIGKILL, run.output
    latest = max(checkpoint_steps(workdir), default=0)
    with Training(args(workdir), env) as run:
        assert run.finish() == 0, run.output
        assert resumed_at(run) == latest, run.output
        outputs.append(run.output)
    print("\n".join(events))

    # A kill never leaves a listed checkpoint that cannot be read.
    assert not any("cannot be restored" in out for out in outputs), "\n".join(outputs)
    assert not os.path.exists(workdir / "corrupt_checkpoints")

    expected, resumed = read_metrics(straight), read_metrics(workdir)
    assert [r["step"] for r in expected] == list(range(1, NUM_STEPS + 1))
    assert [r["step"] for r in resumed] == list(range(1, NUM_STEPS + 1)), events
    for key in ("loss", "accuracy", "grad_norm", "learning_rate", "tokens"):
        np.testing.assert_array_equal(
            [r[key] for r in resumed], [r[key] for r in expected], err_msg=key
        )
    assert read_metrics(workdir, "eval")[-1]["loss"] == read_metrics(straight, "eval")[-1]["loss"]

    params, step = final_params(str(workdir), NUM_STEPS)
    expected_params, expected_step = final_params(str(straight), NUM_STEPS)
    assert step == expected_step == NUM_STEPS
    assert_trees_equal(params, expected_params)


def test_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    config = load_config("tiny")  # Checkpoints every 10 steps, a train record every 5.
    straight = str(tmp_path / "straight")
    config.train.num_steps = 30
    train_and_evaluate(config, straight)

    workdir = str(tmp_path / "w")
    config.train.num_steps = 20
    train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir) == [10, 20]
    files = [p for p in glob.glob(f"{workdir}/checkpoints/20/state/**", recursive=True)]
    largest = max((p for p in files if os.path.isfile(p)), key=os.path.getsize)
    size = os.path.getsize(largest) // 2
    with open(largest, "r+b") as f:
        f.truncate(size)
    unfinished = os.path.join(workdir, "checkpoints", "40.orbax-checkpoint-tmp-123")
    os.makedirs(os.path.join(unfinished, "state"))
    with open(os.path.join(unfinished, "state", "_METADATA"), "w") as f:
        f.write("{")
    capsys.readouterr()

    config.train.num_steps = 30
    train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    assert re.search(r"WARNING: ignoring 40\.orbax-checkpoint-tmp-123 .*did not finish", out), out
    assert "WARNING: checkpoint 20 cannot be restored" in out, out
    assert re.search(r"WARNING: moved the unreadable checkpoint 20 to .*corrupt_checkpoints", out)
    assert f"Resumed from {workdir} at step 10." in out, out
    moved = os.listdir(os.path.join(workdir, "corrupt_checkpoints"))
    assert len(moved) == 1 and moved[0].startswith("20-"), moved
    relative = os.path.relpath(largest, os.path.join(workdir, "checkpoints", "20"))
    kept = os.path.join(workdir, "corrupt_checkpoints", moved[0], relative)
    assert os.path.getsize(kept) == size  # Moved as it was, not deleted or repaired.
    assert checkpoint_steps(workdir) == [10, 20, 30]
    assert os.path.isdir(unfinished)  # Ignored and left in place.

    for split in ("train", "eval"):
        resumed, expected = read_metrics(workdir, split), read_metrics(straight, split)
        assert [r["step"] for r in resumed] == [r["step"] for r in expected]
        np.testing.assert_array_equal([r["loss"] for r in resumed], [r["loss"] for r in expected])
    assert [r["step"] for r in read_metrics(workdir)] == [5, 10, 15, 20, 25, 30]


@pytest.fixture(scope="module")
def trained_ten_steps(tmp_path_factory):
    """A tiny run of 10 steps (one checkpoint, at 10) and its saved parameters."""
    workdir = str(tmp_path_factory.mktemp("ten"))
    config = load_config("tiny")
    config.train.num_steps = 10
    train_and_evaluate(config, workdir)
    params, step = final_params(workdir, 10)
    assert step == 10 and checkpoint_steps(workdir) == [10]
    return workdir, params


@pytest.mark.parametrize(
    "clip_norm",
    [
        1.0,
        0.0,
    ],
)
def test_diverging_resume_keeps_the_last_good_checkpoint(trained_ten_steps, tmp_path, clip_norm):
    source, saved_params = trained_ten_steps
    workdir = str(tmp_path / "w")
    shutil.copytree(source, workdir)
    before = read_metrics(workdir)
    config = load_config("tiny")
    config.train.num_steps = 20
    config.optimizer.learning_rate = 1e30
    config.optimizer.clip_norm = clip_norm
    # Diverging after step 10, or (clip_norm 0) refusing an optimizer the checkpoint does
    # not fit; never restarting from scratch.
    with pytest.raises((FloatingPointError, ConfigError)) as raised:
        train_and_evaluate(config, workdir)
    if raised.type is FloatingPointError:
        m = re.search(r"at step (\d+)", str(raised.value))
        assert m and 11 <= int(m[1]) <= 20, str(raised.value)
    else:
        # clip_norm 0 drops the clipping transform: another optimizer-state structure.
        assert clip_norm == 0.0 and "config.optimizer.clip_norm" in str(raised.value), str(
            raised.value
        )
    assert checkpoint_steps(workdir) == [10]
    assert not os.path.exists(os.path.join(workdir, "corrupt_checkpoints"))
    assert read_metrics(workdir)[: len(before)] == before
    params, step = final_params(workdir, 20)
    assert step == 10
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    assert_trees_equal(params, saved_params)


def test_resume_with_other_chunking_but_not_another_model(trained_ten_steps, tmp_path):
    """Chunk sizes and LSH heads per step say how the model is computed, so a run resumes
    with other values; a different model (here its width) is refused, naming the field."""
    source, saved_params = trained_ten_steps
    workdir = str(tmp_path / "w")
    shutil.copytree(source, workdir)
    config = load_config("tiny")
    config.train.num_steps = 12
    config.model.position_chunk_size, config.model.loss_chunk_size = 4, 8
    config.model.lsh_heads_per_step = 1
    train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir)[-1] == 12
    config.model.d_ff *= 2
    config.train.num_steps = 14
    with pytest.raises(ConfigError, match="config.model.d_ff: checkpoint has"):
        train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir)[-1] == 12


def test_keep_records_up_to_drops_later_steps_and_a_torn_line(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    lines = [
        json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n" for s in range(1, 11)
    ]
    with open(path, "w") as f:
        f.writelines(lines)
        f.write('{"step": 11, "split": "tr')  # Torn by a kill in the middle of a write.
    assert keep_records_up_to(path, 6) == 5
    with open(path) as f:
        assert f.read() == "".join(lines[:6])
    assert keep_records_up_to(path, 6) == 0  # Nothing more to drop: the file is unchanged.
    assert keep_records_up_to(str(tmp_path / "missing.jsonl"), 6) == 0


def test_a_checkpoint_of_another_optimizer_is_refused_not_taken_for_corrupt(
    trained_ten_steps, tmp_path
):
    """Without config.json to compare with, a state of another structure (Adafactor against
    an Adam checkpoint) is still a clear error, and the checkpoint stays where it is."""
    source, saved_params = trained_ten_steps
    workdir = str(tmp_path / "w")
    shutil.copytree(source, workdir)
    os.remove(os.path.join(workdir, "config.json"))
    config = load_config("tiny")
    config.train.num_steps = 20
    config.optimizer.name = "adafactor"
    with pytest.raises(ConfigError, match="another structure"):
        train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir) == [10]
    assert not os.path.exists(os.path.join(workdir, "corrupt_checkpoints"))


def test_no_readable_checkpoint_stops_without_moving_anything(trained_ten_steps, tmp_path):
    """When every checkpoint fails to restore the run does not start from scratch over
    them: it stops with the reasons, moving and deleting nothing."""
    source, _ = trained_ten_steps
    workdir = str(tmp_path / "w")
    shutil.copytree(source, workdir)
    state_dir = os.path.join(workdir, "checkpoints", "10", "state")
    files = [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    before = read_metrics(workdir)
    config = load_config("tiny")
    config.train.num_steps = 20
    with pytest.raises(ConfigError, match="no checkpoint .* can be restored"):
        train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir) == [10]
    assert not os.path.exists(os.path.join(workdir, "corrupt_checkpoints"))
    assert read_metrics(workdir) == before
