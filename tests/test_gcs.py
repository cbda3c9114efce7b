"""Training, evaluating and sampling with `--workdir gs://...`, against a local Cloud Storage
emulator (tests/gcs_emulator.py, started and stopped here, on 127.0.0.1; nothing reaches the
real Google Cloud). Every command runs as a subprocess with the emulator's environment.

The bucket is inspected from this process through google-cloud-storage pointed at the
emulator; checkpoints are compared after copying them to a local directory."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import zipfile

import jax
import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from tests import gcs_emulator
from tests.conftest import REPO, run_module
from tests.test_multihost import finish, small_overrides, start_processes
from tests.test_recovery import PROGRESS, Training, assert_trees_equal, final_params, resumed_at

# Seed 3 kills while the save of step 10 is unfinished, so the restart meets an uncommitted step.
SEED = int(os.environ.get("GCS_RECOVERY_SEED", "3"))
NUM_STEPS = 30
CHECKPOINT_EVERY = 5
TIMEOUT = 240

# Reads of a truncated checkpoint leave orbax coroutines that complain when collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def emulator():
    with gcs_emulator.running() as e:
        yield e


@pytest.fixture(scope="module")
def bucket(emulator):
    client = gcs.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=emulator.url),
    )
    return client.bucket(emulator.bucket)


def names(bucket, prefix: str) -> list[str]:
    """Object names under `prefix/`, relative to it."""
    return sorted(b.name[len(prefix) + 1 :] for b in bucket.list_blobs(prefix=prefix + "/"))


def download(bucket, prefix: str, local: str) -> str:
    """Copies every object under `prefix/` to the directory `local`; returns `local`."""
    for name in names(bucket, prefix):
        path = os.path.join(local, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        bucket.blob(f"{prefix}/{name}").download_to_filename(path)
    return local


def complete_steps(bucket, prefix: str) -> list[int]:
    """Steps with orbax's commit marker under `prefix/checkpoints`."""
    marker = re.compile(r"^checkpoints/(\d+)/commit_success\.txt$")
    return sorted(int(m[1]) for m in map(marker.match, names(bucket, prefix)) if m)


def metrics(bucket, prefix: str, split: str = "train") -> list[dict]:
    text = bucket.blob(f"{prefix}/metrics.jsonl").download_as_text()
    return [r for r in map(json.loads, text.splitlines()) if r["split"] == split]


def train_args(workdir: str, num_steps: int = NUM_STEPS) -> list[str]:
    return [
        "--config",
        "configs/tiny.py",
        "--workdir",
        workdir,
        f"--config.train.num_steps={num_steps}",
        "--config.train.log_every=1",
        f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
        "--config.train.eval_every=0",
    ]


@pytest.fixture(scope="module")
def interrupted_run(emulator, bucket, tmp_path_factory):
    """The tiny model trained into gs://test-bucket/run, stopped by SIGTERM and by kill -9 (at
    seeded random moments, one right after a checkpoint step's save began) and restarted after
    each; and the same run trained locally without interruption."""
    tmp = tmp_path_factory.mktemp("gcs_run")
    env = {**emulator.env, "JAX_PLATFORMS": "cpu"}
    straight = str(tmp / "straight")
    with Training(train_args(straight), env) as run:
        assert run.finish() == 0, run.output
    workdir, prefix = f"gs://{emulator.bucket}/run", "run"
    rng = random.Random(SEED)
    events, outputs = [], []
    for sig, save in (("SIGTERM", False), ("SIGKILL", True)):
        before = complete_steps(bucket, prefix)
        with Training(train_args(workdir), env) as run:
            start = resumed_at(run, wait=True)
            assert start == (max(before) if before else 0), run.output
            k = start + rng.randint(2, 8)

            def due(line, k=k, save=save):
                m = PROGRESS.search(line)
                return m and int(m[1]) >= k and (not save or int(m[1]) % CHECKPOINT_EVERY == 0)

            run.wait_for(due)
            run.proc.send_signal(signal.SIGTERM if sig == "SIGTERM" else signal.SIGKILL)
            rc = run.finish()
            outputs.append(run.output)
        events.append(f"{sig} after step {k}: rc {rc}, complete {complete_steps(bucket, prefix)}")
        if sig == "SIGTERM":
            assert rc == 0, run.output
            stopped = re.search(r"Stopped at step (\d+); checkpoint saved", run.output)
            assert stopped and max(complete_steps(bucket, prefix)) == int(stopped[1]), run.output
        else:
            assert rc == -signal.SIGKILL, run.output
    latest = max(complete_steps(bucket, prefix))
    with Training(train_args(workdir), env) as run:
        assert run.finish() == 0, run.output
        assert resumed_at(run) == latest > 0, run.output
        outputs.append(run.output)
    return {
        "workdir": workdir,
        "prefix": prefix,
        "straight": straight,
        "events": events,
        "outputs": outputs,
        "tmp": tmp,
        "env": env,
    }


def test_sigterm_kill_and_resume_in_a_bucket_match_an_uninterrupted_run(interrupted_run, bucket):
    r = interrupted_run
    prefix = r["prefix"]
    warnings = [ln for out in r["outputs"] for ln in out.splitlines() if "WARNING" in ln]
    print("\n".join(r["events"] + warnings))
    assert not any("cannot be restored" in out for out in r["outputs"]), r["outputs"]
    top = {name.split("/")[0] for name in names(bucket, prefix)}
    assert top == {"checkpoints", "config.json", "metrics.jsonl", "tb"}, top
    assert not os.path.exists(os.path.join(REPO, "gs:")), "a local gs: directory was created"
    # Each step once in metrics.jsonl, with the uninterrupted run's numbers.
    with open(os.path.join(r["straight"], "metrics.jsonl")) as f:
        expected = [x for x in map(json.loads, f) if x["split"] == "train"]
    resumed = metrics(bucket, prefix)
    assert [x["step"] for x in resumed] == list(range(1, NUM_STEPS + 1)), r["events"]
    for key in ("loss", "accuracy", "grad_norm", "learning_rate"):
        assert [x[key] for x in resumed] == [x[key] for x in expected], key
    # The final parameters, bit for bit (read from a local copy of the bucket's workdir).
    local = download(bucket, prefix, str(r["tmp"] / "copy"))
    params, step = final_params(local, NUM_STEPS)
    expected_params, expected_step = final_params(r["straight"], NUM_STEPS)
    assert step == expected_step == NUM_STEPS
    assert_trees_equal(jax.device_get(params), expected_params)
    assert json.loads(bucket.blob(f"{prefix}/config.json").download_as_text())["model"]


def test_every_tensorboard_scalar_of_every_step_is_in_the_bucket(interrupted_run, bucket):
    """Three writer segments (two restarts), each its own event file, none lost or cut."""
    prefix = interrupted_run["prefix"]
    files = [n for n in names(bucket, prefix) if n.startswith("tb/events.out.tfevents")]
    assert len(files) == 3, files
    local = download(bucket, f"{prefix}/tb", str(interrupted_run["tmp"] / "tb"))
    seen: dict[str, set[int]] = {}
    for name in files:
        for event in EventFileLoader(os.path.join(local, os.path.basename(name))).Load():
            for value in event.summary.value:
                seen.setdefault(value.tag, set()).add(event.step)
    every = set(range(1, NUM_STEPS + 1))
    for tag in ("train/loss", "train/accuracy", "train/grad_norm", "train/learning_rate"):
        assert seen.get(tag) == every, (tag, sorted(seen.get(tag, ())))
    assert seen.get("eval/loss") == {NUM_STEPS}


def test_evaluate_and_sample_read_the_bucket(interrupted_run, bucket):
    env, workdir = interrupted_run["env"], interrupted_run["workdir"]
    common = ["--config", "configs/tiny.py", "--workdir", workdir]
    result = run_module(["reformer.evaluate", *common], env=env, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    record = json.loads(bucket.blob("run/eval_validation.json").download_as_text())
    assert record["step"] == NUM_STEPS
    assert record["loss"] == metrics(bucket, "run", "eval")[-1]["loss"]
    result = run_module(
        ["reformer.sample", *common, "--prompt_ids", "1,2", "--length", "4", "--temperature", "0"],
        env=env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"step {NUM_STEPS} of {workdir}" in result.stdout
    assert re.search(r"--- sample 1 ---\n1,2(,\d+){4}\n", result.stdout), result.stdout


def test_truncated_newest_checkpoint_in_a_bucket_is_set_aside(emulator, bucket):
    """A truncated object in the newest step: that step is copied to corrupt_checkpoints/ and
    deleted only then; an unfinished step (no commit marker) is named and left alone."""
    env = {**emulator.env, "JAX_PLATFORMS": "cpu"}
    workdir, prefix = f"gs://{emulator.bucket}/truncated", "truncated"
    args = ["--config", "configs/tiny.py", "--workdir", workdir, "--config.train.eval_every=0"]
    result = run_module(["reformer.train", *args, "--config.train.num_steps=20"], env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert complete_steps(bucket, prefix) == [10, 20]
    blobs = [b for b in bucket.list_blobs(prefix=f"{prefix}/checkpoints/20/state/")]
    largest = max(blobs, key=lambda b: b.size)
    content = largest.download_as_bytes()
    bucket.blob(largest.name).upload_from_string(content[: len(content) // 2])
    relative = largest.name[len(f"{prefix}/checkpoints/20/") :]
    bucket.blob(f"{prefix}/checkpoints/40/state/_METADATA").upload_from_string(b"{")

    result = run_module(["reformer.train", *args, "--config.train.num_steps=30"], env=env)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert re.search(r"WARNING: ignoring 40 in .*: a save that did not finish", out), out
    assert "WARNING: checkpoint 20 cannot be restored" in out, out
    assert f"Resumed from {workdir} at step 10." in out, out
    moved = [n for n in names(bucket, prefix) if n.startswith("corrupt_checkpoints/")]
    steps = {n.split("/")[1] for n in moved}
    assert len(steps) == 1 and next(iter(steps)).startswith("20-"), moved
    kept = bucket.blob(f"{prefix}/corrupt_checkpoints/{next(iter(steps))}/{relative}")
    kept.reload()
    assert kept.size == len(content) // 2  # Copied as it was, not repaired.
    assert complete_steps(bucket, prefix) == [10, 20, 30]
    assert "checkpoints/40/state/_METADATA" in names(bucket, prefix)


def test_a_missing_bucket_is_refused_before_anything_is_written(emulator, bucket):
    env = {**emulator.env, "JAX_PLATFORMS": "cpu"}
    result = run_module(
        ["reformer.train", "--config", "configs/tiny.py", "--workdir", "gs://no-such-bucket/r"],
        env=env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == (
        "error: --workdir: gs://no-such-bucket/r: the bucket gs://no-such-bucket does not exist "
        "(or these credentials cannot see it). Create it first (gcloud storage buckets create "
        "gs://no-such-bucket); nothing was written."
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert "Compiled" not in result.stdout


def test_two_processes_in_one_bucket_workdir_lose_one_and_resume(emulator, bucket):
    """Two processes (two CPU devices each) train into the bucket; kill -9 of process 1 ends
    process 0 with the one line naming it and the last complete checkpoint; both restarted
    resume from that checkpoint and finish. Only process 0 writes metrics and events."""
    workdir, prefix = f"gs://{emulator.bucket}/two", "two"
    # The survivor ends within the heartbeat timeout of the kill (start_processes: 15 s).
    args = [*small_overrides(60), "--config.train.checkpoint_every=5", "--heartbeat_timeout=8"]
    procs = start_processes("reformer.train", workdir, 2, args, emulator.env)
    try:
        for line in procs[0].stdout:  # Until a checkpoint is written and training goes on.
            if re.search(r"step +(1[2-9]|[2-5]\d)/60", line):
                break
        procs[1].send_signal(signal.SIGKILL)
        out = procs[0].communicate(timeout=TIMEOUT)[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 1, out[-3000:]
    m = re.fullmatch(
        r"error: process 1 of 2 was lost \(it stopped sending heartbeats to the coordination "
        r"service\); this process \(0\) stopped too\. Last complete checkpoint: step (\d+) in "
        rf"{workdir}\. Restart all processes with the same command to resume from it\.",
        out.strip().splitlines()[-1],
    )
    assert m, out[-3000:]
    latest = int(m[1])
    assert latest == max(complete_steps(bucket, prefix)) >= 5
    assert "Check failure stack trace" not in out and "Fatal Python error" not in out

    outs = finish(start_processes("reformer.train", workdir, 2, args, emulator.env))
    assert all(f"Resumed from {workdir} at step {latest}." in out for out in outs), outs
    assert "step      60/60" in outs[0] and "step      60/60" not in outs[1]
    assert max(complete_steps(bucket, prefix)) == 60
    assert [r["step"] for r in metrics(bucket, prefix)] == list(range(1, 61))
    events = [n for n in names(bucket, prefix) if n.startswith("tb/")]
    assert len(events) == 2, events  # One writer per run, in process 0 only.
    assert not [n for n in names(bucket, prefix) if ".write_test" in n]


def test_config_file_init_from_and_data_files_on_the_bucket(emulator, bucket, interrupted_run):
    """`--config gs://...`, `train.init_from=gs://...`, and a text file and an enwik8 zip on
    the bucket (the zip prepared by TFDS into a local data_dir)."""
    env, tmp = interrupted_run["env"], interrupted_run["tmp"]
    with open(os.path.join(REPO, "configs", "tiny.py")) as f:
        bucket.blob("configs/tiny.py").upload_from_string(f.read())
    local = str(tmp / "from_bucket")
    result = run_module(
        [
            "reformer.train",
            "--config",
            f"gs://{emulator.bucket}/configs/tiny.py",
            "--workdir",
            local,
            f"--config.train.init_from={interrupted_run['workdir']}",
            "--config.train.num_steps=2",
        ],
        env=env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (
        f"from the parameters of {interrupted_run['workdir']} (its step {NUM_STEPS})"
        in result.stdout
    ), result.stdout

    with open(os.path.join(REPO, "..", "shared", "data", "enwik8_prefix_4154399"), "rb") as f:
        prefix = f.read(200_000)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("enwik8", prefix)
    bucket.blob("data/enwik8.zip").upload_from_string(archive.getvalue())
    bucket.blob("data/text.txt").upload_from_string(prefix[:50_000])
    script = (
        "import sys; from reformer.data import enwik8, text; "
        f"assert text.read_file('gs://{emulator.bucket}/data/text.txt') == "
        f"open(sys.argv[1], 'rb').read(50_000); "
        f"s = enwik8.load_splits('gs://{emulator.bucket}/data/enwik8.zip', sys.argv[2]); "
        "print({k: len(v) for k, v in sorted(s.items())})"
    )
    data = os.path.join(REPO, "..", "shared", "data", "enwik8_prefix_4154399")
    result = subprocess.run(
        [sys.executable, "-c", script, data, str(tmp / "tfds")],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "{'test': 10000, 'train': 180000, 'validation': 10000}" in result.stdout
