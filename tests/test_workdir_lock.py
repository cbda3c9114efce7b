"""One writer per workdir (reformer/training/workdir_lock.py): a second training run is refused
in one line naming the holder; a holder that is gone is taken over (at once when its process
was on this host, after the missed renewals otherwise); a run whose lock was taken stops; the
lock is released on every way out, a failing evaluation included, which keeps its step's
checkpoint. Local workdirs in this process with short intervals; real training runs and the
Cloud Storage emulator in subprocesses, each with a timeout."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from reformer.training import loop, workdir_lock
from reformer.training.workdir_lock import LOCK_FILE, Holder, WorkdirLock
from tests import gcs_emulator
from tests.conftest import REPO, checkpoint_steps, load_config, read_metrics, run_module
from tests.test_recovery import PROGRESS, Training

TIMEOUT = 180  # seconds for any one subprocess


def write_holder(workdir, **fields) -> Holder:
    """A lock in `workdir` as another run would have left it."""
    now = time.time()
    holder = Holder(
        **{
            "host": "elsewhere", "pid": 4321, "run_id": "other", "started": now - 60,
            "renewed": now, "renew_every": 30.0, **fields,
        }
    )  # fmt: skip
    with open(os.path.join(workdir, LOCK_FILE), "wb") as f:
        f.write(holder.to_bytes())
    return holder


def lock_holder(workdir) -> dict | None:
    path = os.path.join(workdir, LOCK_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def test_a_live_lock_is_refused_in_one_line_naming_its_holder(tmp_path):
    first = WorkdirLock(str(tmp_path), 30)
    assert first.acquire() is None
    assert lock_holder(tmp_path)["pid"] == os.getpid()
    refusal = WorkdirLock(str(tmp_path), 30).acquire()
    assert refusal is not None and "\n" not in refusal
    assert re.match(
        rf"--workdir: {re.escape(str(tmp_path))} is in use by another training run \(host "
        rf"{re.escape(socket.gethostname())}, process {os.getpid()}, running since "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d; lock renewed 0 s ago\)\.",
        refusal,
    ), refusal
    assert f"delete {tmp_path / LOCK_FILE}" in refusal
    first.release()
    assert lock_holder(tmp_path) is None
    second = WorkdirLock(str(tmp_path), 30)
    assert second.acquire() is None
    second.release()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, timeout=60, check=True)  # fmt: skip
    pid = int(gone.stdout)
    write_holder(tmp_path, host=socket.gethostname(), pid=pid)
    lock = WorkdirLock(str(tmp_path), 30)
    assert lock.acquire() is None
    out = capsys.readouterr().out
    assert f"Took over the lock of host {socket.gethostname()}, process {pid}" in out, out
    assert f"its process {pid} on this host is gone" in out, out
    assert lock_holder(tmp_path)["run_id"] == lock.me.run_id
    lock.release()


def test_a_reused_process_id_or_an_unreadable_lock_is_not_a_live_holder(tmp_path, capsys):
    write_holder(tmp_path, host=socket.gethostname(), pid=os.getpid(), pid_start=1)
    lock = WorkdirLock(str(tmp_path), 30)
    assert lock.acquire() is None
    lock.release()
    with open(tmp_path / LOCK_FILE, "w") as f:
        f.write('{"host": "elsewh')  # Torn.
    lock = WorkdirLock(str(tmp_path), 30)
    assert lock.acquire() is None
    assert "Took over the lock it found in" in capsys.readouterr().out
    lock.release()


def test_a_lock_of_another_host_is_taken_after_three_missed_renewals(tmp_path, capsys):
    write_holder(tmp_path, renew_every=20.0, renewed=time.time() - 50)
    lock = WorkdirLock(str(tmp_path), 30)
    refusal = lock.acquire()
    assert refusal and "(host elsewhere, process 4321, running since" in refusal, refusal
    assert "lock renewed 50 s ago). Stop that run first" in refusal, refusal
    assert "A lock not renewed for 60 s is taken over" in refusal, refusal
    write_holder(tmp_path, renew_every=20.0, renewed=time.time() - 61)
    assert lock.acquire() is None
    out = capsys.readouterr().out
    assert re.search(
        r"Took over the lock of host elsewhere, process 4321, running since .*: it was last "
        r"renewed 61 s ago \(3 renewals of 20 s missed\)\.",
        out,
    ), out
    lock.release()


def test_renewals_keep_the_lock_and_a_run_whose_lock_was_taken_stops(tmp_path, monkeypatch, capsys):
    exits = []
    monkeypatch.setattr(workdir_lock, "_exit", exits.append)
    lock = WorkdirLock(str(tmp_path), 0.2)
    assert lock.acquire() is None
    first = lock_holder(tmp_path)["renewed"]
    lock.start()
    deadline = time.monotonic() + 30
    while lock_holder(tmp_path)["renewed"] == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock_holder(tmp_path)["renewed"] > first  # Renewed meanwhile.
    write_holder(tmp_path)  # Another run took it over (this one looked dead).
    deadline = time.monotonic() + 10
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exits[:1] == [workdir_lock.EXIT_LOST]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(
        f"error: {tmp_path} was taken over by another run (host elsewhere, process 4321, "
    ), err
    assert "stopping at once, without saving" in err[0]
    lock.release()
    assert lock_holder(tmp_path)["run_id"] == "other"  # The other run's lock is left alone.


def test_a_second_training_run_is_refused_and_the_first_keeps_its_records(tmp_path):
    """Two `reformer.train` on one local workdir: the second stops at once with the one line
    naming the first, which trains on, stops on SIGTERM and releases the lock."""
    workdir = str(tmp_path / "w")
    args = ["--config", "configs/tiny.py", "--workdir", workdir, "--config.train.num_steps=100000",
            "--config.train.log_every=10", "--config.train.eval_every=0",
            "--config.train.checkpoint_every=50"]  # fmt: skip
    env = {"JAX_PLATFORMS": "cpu"}
    with Training(args, env) as first:
        # The first holds the lock once it starts from scratch; the second starts meanwhile.
        first.wait_for(lambda line: "Starting from scratch" in line, timeout=TIMEOUT)
        with Training(args, env) as second:
            assert second.finish(timeout=TIMEOUT) == 2, second.output
        first.wait_for(lambda line: PROGRESS.search(line) is not None)  # Training on.
        first.proc.send_signal(signal.SIGTERM)
        assert first.finish() == 0, first.output
    refusal = [line for line in second.lines if line.startswith("error:")]
    assert len(refusal) == 1 and "Traceback" not in second.output, second.output
    assert refusal[0].startswith(
        f"error: --workdir: {workdir} is in use by another training run (host "
        f"{socket.gethostname()}, process {first.proc.pid}, running since "
    ), second.output
    assert "dropped" not in second.output and "Compiled" not in second.output
    stopped = int(re.search(r"Stopped at step (\d+)", first.output)[1])
    steps = [r["step"] for r in read_metrics(workdir)]
    assert steps == list(range(10, stopped + 1, 10)), steps  # Each once, in order.
    assert checkpoint_steps(workdir)[-1] == stopped
    assert lock_holder(workdir) is None


def test_a_failing_evaluation_keeps_the_checkpoint_of_its_step_and_releases_the_lock(tmp_path):
    config = load_config("tiny")
    config.train.num_steps, config.train.eval_every, config.train.checkpoint_every = 20, 10, 20

    def make_eval_fn(config, model, abstract_params):
        def eval_fn(params, batch):
            raise TypeError("'NoneType' object is not subscriptable")

        return eval_fn

    workdir = str(tmp_path)
    with pytest.raises(loop.EvaluationFailed) as raised:
        loop.train(config, workdir, make_eval_fn)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        "the evaluation at step 10 failed (TypeError: 'NoneType' object is not subscriptable); "
        f"the checkpoint of step 10 is kept in {workdir}."
    ), message
    assert checkpoint_steps(workdir) == [10]
    assert [r["step"] for r in read_metrics(workdir)] == [5, 10]
    assert lock_holder(workdir) is None


# The lock on Cloud Storage (generation preconditions), in a fresh process pointed at the
# emulator; orbax's first TensorStore request there leaves no credentials line on stderr.
LOCK_IN_A_BUCKET = """
import json, sys, time
import numpy as np
from reformer import storage
from reformer.training import checkpoints, workdir_lock
from reformer.training.workdir_lock import Holder, WorkdirLock

workdir, out, exits = sys.argv[1], {}, []
workdir_lock._exit = exits.append
first = WorkdirLock(workdir, 30)
out["first"] = first.acquire()
second = WorkdirLock(workdir, 30)
out["refused"] = second.acquire()
before = storage.read_versioned(first.path)
first.renew()
out["renewed"] = storage.read_versioned(first.path)[1] != before[1]
# The first run freezes on another host: its lock is 100 s old.
data, version = storage.read_versioned(first.path)
frozen = Holder.from_bytes(data)
frozen.host, frozen.renewed = "elsewhere", frozen.renewed - 100
storage.replace_if(first.path, frozen.to_bytes(), version)
out["taken_after_missed_renewals"] = second.acquire()
first.renew()  # Finds the lock taken.
out["exits"] = exits
second.release()
out["released"] = storage.read_versioned(second.path) is None
manager = checkpoints.make_manager(workdir, 1)
checkpoints.save(manager, 1, {"x": np.arange(3)}, {"step": 1})
checkpoints.finish(manager)
out["saved"] = storage.isfile(storage.join(workdir, "checkpoints", "1", "commit_success.txt"))
print(json.dumps(out))
"""


def test_the_lock_in_a_bucket(tmp_path):
    with gcs_emulator.running() as emulator:
        workdir = f"gs://{emulator.bucket}/locked"
        result = subprocess.run(
            [sys.executable, "-c", LOCK_IN_A_BUCKET, workdir],
            cwd=REPO,
            env={**os.environ, **emulator.env, "JAX_PLATFORMS": "cpu"},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["first"] is None, out
    assert out["refused"].startswith(f"--workdir: {workdir} is in use by another training run")
    assert out["renewed"] is True
    assert out["taken_after_missed_renewals"] is None
    assert "3 renewals of 30 s missed" in result.stdout
    assert out["exits"] == [workdir_lock.EXIT_LOST]
    assert f"error: {workdir} was taken over by another run" in result.stderr
    assert out["released"] and out["saved"], out
    assert "google_auth_provider" not in result.stderr, result.stderr
    assert "GOOGLE_AUTH_TOKEN_FOR_TESTING" not in result.stderr, result.stderr


@pytest.mark.slow
def test_a_second_training_run_in_a_bucket_is_refused(tmp_path):
    with gcs_emulator.running() as emulator:
        workdir = f"gs://{emulator.bucket}/run"
        args = ["--config", "configs/tiny.py", "--workdir", workdir,
                "--config.train.num_steps=100000", "--config.train.log_every=10",
                "--config.train.eval_every=0", "--config.train.checkpoint_every=50"]  # fmt: skip
        env = {**emulator.env, "JAX_PLATFORMS": "cpu"}
        with Training(args, env) as first:
            first.wait_for(lambda line: PROGRESS.search(line) is not None, timeout=TIMEOUT)
            second = run_module(["reformer.train", *args], env=env, timeout=TIMEOUT)
            assert first.proc.poll() is None, first.output
            first.proc.send_signal(signal.SIGTERM)
            assert first.finish() == 0, first.output
        assert second.returncode == 2, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        assert second.stderr.splitlines()[0].startswith(
            f"error: --workdir: {workdir} is in use by another training run (host "
            f"{socket.gethostname()}, process {first.proc.pid}, running since "
        ), second.stderr
        stopped = int(re.search(r"Stopped at step (\d+)", first.output)[1])
        records = map(json.loads, read_object(emulator, "run/metrics.jsonl").splitlines())
        steps = [r["step"] for r in records if r["split"] == "train"]
        assert steps == list(range(10, stopped + 1, 10)), steps
        assert read_object(emulator, "run/lock.json") is None


def read_object(emulator, name: str) -> str | None:
    """An object of the emulator's bucket as text (None when it does not exist)."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=emulator.url),
    )
    blob = client.bucket(emulator.bucket).blob(name)
    return blob.download_as_text() if blob.exists() else None
