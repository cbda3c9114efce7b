"""Storage that stops answering (reformer/storage_faults.py): calls retried with backoff up to
the limit, a watchdog that reports a wait once a minute and ends a process whose storage
has not answered for the limit, with one line and exit status 75; an unreachable endpoint at
start is one line, at once, for every command. In this process with the endpoint's answers
and the exit replaced; against the Cloud Storage emulator (paused mid-run) in subprocesses,
each with a timeout."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import threading
import time

import jax
import pytest

from reformer import storage, storage_faults
from reformer.errors import ConfigError
from tests import gcs_emulator
from tests.conftest import run_module
from tests.test_gcs import complete_steps, download, metrics
from tests.test_recovery import PROGRESS, Training, assert_trees_equal, final_params

TIMEOUT = 180  # seconds for any one subprocess


class Refused(ConnectionRefusedError):
    pass


class HttpError(Exception):
    """Named as gcsfs names its HTTP errors."""

    def __init__(self, code):
        super().__init__(f"HTTP {code}")
        self.code = code


@pytest.fixture
def faults(monkeypatch):
    """Short intervals; the exit and the pauses recorded instead of taken."""
    record = {"exits": [], "sleeps": []}
    monkeypatch.setattr(storage_faults, "_exit", record["exits"].append)
    monkeypatch.setattr(storage_faults, "_sleep", record["sleeps"].append)
    monkeypatch.setattr(storage_faults, "check_reachable", lambda bucket, where: None)
    monkeypatch.setattr(storage_faults, "PROBE_AFTER", 0.1)
    monkeypatch.setattr(storage_faults, "PROBE_EVERY", 0.1)
    monkeypatch.setattr(storage_faults._watchdog, "tick_every", 0.05)
    storage_faults.set_limit(1.0)
    storage_faults.set_note(lambda: "Last complete checkpoint: step 40 in gs://b/run. Restart.")
    yield record
    storage_faults.set_note(None)
    storage_faults.set_limit(storage_faults.DEFAULT_LIMIT)
    storage_faults.forget("")


def test_what_is_transient():
    assert storage_faults.is_transient(Refused("[Errno 111] Connect call failed"))
    assert storage_faults.is_transient(TimeoutError())
    assert storage_faults.is_transient(HttpError(503)) and storage_faults.is_transient(
        HttpError("429")
    )
    assert storage_faults.is_transient(ValueError("UNAVAILABLE: CURL error [7] ..."))
    try:
        try:
            raise Refused("no")
        except Refused as e:
            raise RuntimeError("orbax failed") from e
    except RuntimeError as wrapped:
        assert storage_faults.is_transient(wrapped)
    for answer in (FileNotFoundError("gs://b/x"), HttpError(404), OSError("Forbidden"),
                   ConfigError("bad"), ValueError("tree structures do not match")):  # fmt: skip
        assert not storage_faults.is_transient(answer), answer


def test_a_call_is_retried_with_backoff_until_it_answers(faults):
    storage_faults.set_limit(100.0)
    failures = [Refused("refused"), HttpError(503), TimeoutError("slow")]

    def flaky():
        if failures:
            raise failures.pop(0)
        return "done"

    assert storage_faults.call("reading", "gs://b/x", "b", flaky) == "done"
    assert faults["sleeps"] == [1.0, 2.0, 4.0] and not faults["exits"]
    with pytest.raises(FileNotFoundError):  # An answer: raised at once.
        storage_faults.call("reading", "gs://b/y", "b", lambda: open("/no/such/file"))
    assert faults["sleeps"] == [1.0, 2.0, 4.0]


def test_a_call_failing_past_the_limit_ends_the_process_with_one_line(faults, capsys):
    storage_faults.set_limit(0.2)

    def down():
        time.sleep(0.05)
        raise Refused("[Errno 111] Connect call failed ('127.0.0.1', 9)")

    with pytest.raises(Refused):  # (raised only because the exit was replaced)
        storage_faults.call("writing", "gs://b/run/metrics.jsonl", "b", down)
    assert faults["exits"] == [storage_faults.EXIT_CODE] == [75]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.fullmatch(
        r"error: Cloud Storage failed for 0 s \(writing gs://b/run/metrics\.jsonl; Refused: "
        r"\[Errno 111\] Connect call failed \('127\.0\.0\.1', 9\)\)\. Last complete "
        r"checkpoint: step 40 in gs://b/run\. Restart\.",
        err[0],
    ), err


def test_the_watchdog_reports_a_silent_wait_then_ends_the_process(faults, monkeypatch, capsys):
    monkeypatch.setattr(storage_faults, "unanswered", lambda bucket: ("http://gcs", "no answer"))
    storage_faults.set_limit(2.0)  # A line every second (a quarter of it, at least 1 s).
    with storage_faults.watch("writing checkpoint 60 to", "gs://b/run/checkpoints", "b"):
        deadline = time.monotonic() + 30
        while not faults["exits"] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert faults["exits"] == [75]
    captured = capsys.readouterr()
    waits = [ln for ln in captured.out.splitlines() if "Waiting for Cloud Storage" in ln]
    assert waits and re.search(
        r"Waiting for Cloud Storage: writing checkpoint 60 to gs://b/run/checkpoints for \d+ s; "
        r"no answer for \d+ s \(http://gcs: no answer\); the run stops after 2 s without one\.",
        waits[0],
    ), captured.out
    assert re.fullmatch(
        r"error: Cloud Storage has not answered for 2 s \(writing checkpoint 60 to "
        r"gs://b/run/checkpoints; http://gcs: no answer\)\. Last complete checkpoint: step 40 "
        r"in gs://b/run\. Restart\.",
        captured.err.strip(),
    ), captured.err


def test_a_slow_operation_on_an_answering_endpoint_goes_on(faults, monkeypatch, capsys):
    monkeypatch.setattr(storage_faults, "unanswered", lambda bucket: None)
    done = threading.Event()
    storage_faults.watch_until("writing checkpoint 5 to", "gs://b/c", "b", done.is_set)
    time.sleep(1.6)
    done.set()
    time.sleep(0.3)
    assert not faults["exits"]
    assert (
        "writing checkpoint 5 to gs://b/c for 1 s; the endpoint answers." in capsys.readouterr().out
    )
    assert not storage_faults._watchdog.ops  # Retired once done.


class _Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_probe_counts_any_answer_and_names_a_refusal():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert storage_faults.probe(f"http://127.0.0.1:{server.server_port}", "b") is None
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    error = storage_faults.probe(f"http://127.0.0.1:{closed}", "b", timeout=2)
    assert error and error.startswith("ConnectionRefusedError"), error


def bucket_of(emulator):
    """The emulator's bucket through google-cloud-storage, to look at from here."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=emulator.url),
    )
    return client.bucket(emulator.bucket)


def closed_port_env() -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    return {**gcs_emulator.ENV_VARS(url), "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_an_unreachable_endpoint_at_start_is_one_line_at_once(command):
    env = closed_port_env()
    url = env["STORAGE_EMULATOR_HOST"]
    start = time.monotonic()
    result = run_module(
        [f"reformer.{command}", "--config", "configs/tiny.py", "--workdir", "gs://bkt/run"],
        env=env,
        timeout=TIMEOUT,
    )
    seconds = time.monotonic() - start
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert re.fullmatch(
        rf"error: (--workdir: )?gs://bkt/run(/config\.json)?: Cloud Storage at {url} cannot be "
        r"reached \(ConnectionRefusedError: \[Errno 111\] Connection refused\); nothing was "
        r"read or written\. .*",
        result.stderr.strip(),
    ), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert seconds < TIMEOUT / 2, seconds  # (the check itself: the test below)


def test_an_unreachable_endpoint_is_named_after_two_quick_requests(monkeypatch):
    env = closed_port_env()
    for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(storage_faults, "_reachable", set())
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^--workdir: gs://bkt/run: Cloud Storage at "):
        storage_faults.check_reachable("bkt", "--workdir: gs://bkt/run")
    assert time.monotonic() - start < 10  # Two requests a second apart (39 s before).


@pytest.mark.slow
def test_sample_names_an_unreachable_endpoint_in_one_line():
    result = run_module(
        ["reformer.sample", "--config", "configs/tiny.py", "--workdir", "gs://bkt/run",
         "--prompt_ids", "1,2", "--length", "4"],
        env=closed_port_env(),
        timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot be reached" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


@pytest.mark.slow
def test_storage_that_stops_answering_mid_run_ends_it_in_time_and_a_restart_resumes_exactly(
    tmp_path,
):
    """The emulator paused after step 25 (requests accepted, never answered): the run ends
    within the limit with the one line and exit status 75, naming the last complete
    checkpoint, which is intact; resumed with the emulator back, the run ends bit-identical to
    an uninterrupted one."""
    limit, num_steps = 20, 60

    def args(workdir, *extra):
        steps = [f"--config.train.num_steps={num_steps}", "--config.train.log_every=1"]
        saves = ["--config.train.checkpoint_every=10", "--config.train.eval_every=0"]
        return ["--config", "configs/tiny.py", "--workdir", workdir, *steps, *saves, *extra]

    straight = str(tmp_path / "straight")
    with Training(args(straight), {"JAX_PLATFORMS": "cpu"}) as run:
        assert run.finish() == 0, run.output
    with gcs_emulator.running() as emulator:
        env = {**emulator.env, "JAX_PLATFORMS": "cpu"}
        workdir = f"gs://{emulator.bucket}/run"
        with Training(args(workdir, f"--config.train.storage_timeout={limit}"), env) as run:
            run.wait_for(lambda ln: (m := PROGRESS.search(ln)) is not None and int(m[1]) >= 25)
            emulator.pause()
            paused = time.monotonic()
            rc = run.finish(timeout=TIMEOUT)
            seconds = time.monotonic() - paused
        emulator.resume()
        out = run.output
        assert rc == storage_faults.EXIT_CODE, out[-3000:]
        assert seconds < limit + 25, seconds  # The limit, plus noticing and one probe.
        assert "Traceback" not in out and "google_auth_provider" not in out, out[-3000:]
        last = out.strip().splitlines()[-1]
        m = re.fullmatch(
            r"error: Cloud Storage (has not answered|failed) .*\. Last complete checkpoint: "
            rf"step (\d+) in {workdir}\. Restart to resume\.",
            last,
        )
        assert m, out[-3000:]
        kept = int(m[2])
        assert "Waiting for Cloud Storage" in out, out[-3000:]
        bucket = bucket_of(emulator)
        assert kept == max(complete_steps(bucket, "run")) >= 10, out[-3000:]

        with Training(args(workdir), env) as again:
            assert again.finish() == 0, again.output
        assert f"Resumed from {workdir} at step {kept}." in again.output, again.output
        records = metrics(bucket, "run")
        assert [r["step"] for r in records] == list(range(1, num_steps + 1))
        with open(os.path.join(straight, "metrics.jsonl")) as f:
            expected = [r for r in map(json.loads, f) if r["split"] == "train"]
        assert [r["loss"] for r in records] == [r["loss"] for r in expected]
        local = download(bucket, "run", str(tmp_path / "copy"))
    params, step = final_params(local, num_steps)
    expected_params, _ = final_params(straight, num_steps)
    assert step == num_steps
    assert_trees_equal(jax.device_get(params), expected_params)


def test_local_paths_are_not_watched(tmp_path):
    path = str(tmp_path / "x.txt")
    storage.write_text(path, "ok")
    assert storage.read_text(path) == "ok" and not storage_faults._watchdog.ops
