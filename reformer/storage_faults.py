"""Cloud Storage that stops answering: deadlines, bounded retries, a watchdog, one line.

A `gs://` workdir can lose its storage endpoint at any moment (a network partition, an
outage, an emulator stopped). Without care, a run then hangs silently: gcsfs retries each
request for about 30 s and TensorStore (orbax's checkpoint arrays) for about 15 minutes. So:

- Every call `reformer/storage.py` makes on a `gs://` path goes through `call`: retried with
  backoff (1, 2, 4, ... 30 s) while it fails with a transient error (no connection, a
  timeout, HTTP 408, 429 or 5xx), for at most the limit (`train.storage_timeout`, default
  300 s); gcsfs requests time out when no byte moves for 60 s, TensorStore's likewise.
- Operations that cannot be given a deadline (orbax's checkpoint writes and reads, which run
  through TensorStore) are registered with `watch` / `watch_until`, as `call`'s are. A
  watchdog thread asks the endpoint (one small HTTP request) about any of them waiting for
  more than a few seconds, prints a line a minute while one waits (what, where, how long,
  whether the endpoint answers; every quarter of the limit when that is shorter), and ends
  the process once the endpoint has not answered for the limit.
- The end is one line on stderr and exit status `EXIT_CODE` (75, EX_TEMPFAIL), never a
  traceback: what failed, where, and what the caller registered with `set_note` (training:
  the last complete checkpoint and "Restart to resume").
- At start, an endpoint that does not answer is a ConfigError in one line after two quick
  requests (`check_reachable`), before any library retries.

Local paths are not watched: a local disk answers or raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

from reformer.console import log
from reformer.errors import ConfigError

EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure; running the command again resumes.
DEFAULT_LIMIT = 300.0  # seconds; `train.storage_timeout` sets it
NOTICE_EVERY = 60.0  # seconds between the lines of a wait
PROBE_AFTER = 3.0  # seconds an operation may take before the watchdog asks the endpoint
PROBE_EVERY = 5.0
PROBE_TIMEOUT = 4.0
START_ATTEMPTS = 2  # requests to an endpoint at start before it is reported unreachable
MAX_DELAY = 30.0  # the longest pause between two tries of a call
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
# (top-level module, class name) of the client libraries' connection and timeout errors.
_TRANSIENT_CLASSES = {
    ("aiohttp", "ClientConnectionError"),
    ("aiohttp", "ServerTimeoutError"),
    ("aiohttp", "ClientPayloadError"),
    ("requests", "ConnectionError"),
    ("requests", "Timeout"),
    ("fsspec", "FSTimeoutError"),
    ("google", "TransportError"),
}

_settings: dict = {"limit": DEFAULT_LIMIT, "note": None}
_reachable: set[str] = set()
_exit = os._exit  # Replaced in tests.
_sleep = time.sleep  # (the pause between two tries of a call)
_giving_up = threading.Lock()

# gcsfs logs every exhausted retry with a traceback; the failure reaches the caller as an
# exception, which is reported in one line instead.
logging.getLogger("gcsfs").setLevel(logging.CRITICAL)


def set_limit(seconds: float) -> None:
    """How long storage may go without answering before the process stops."""
    _settings["limit"] = float(seconds)


def limit() -> float:
    return _settings["limit"]


def set_note(note: Callable[[], str] | None) -> None:
    """What the last line adds (called when the process stops: it must not use storage)."""
    _settings["note"] = note


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds} s"


def describe(error: BaseException) -> str:
    """An error in one short line: its type and the first line of its message."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error.reason, str):
        error = error.reason
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def endpoints() -> list[str]:
    """The Cloud Storage endpoints this process's clients use: gcsfs's (and
    google-cloud-storage's) and TensorStore's, each once."""
    emulator = os.environ.get("FSSPEC_GCS_ENDPOINT_URL") or os.environ.get(
        "STORAGE_EMULATOR_HOST", ""
    )
    if emulator in ("", "default"):
        gcsfs = DEFAULT_ENDPOINT
    else:
        gcsfs = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
    tensorstore = os.environ.get("TENSORSTORE_GCS_HTTP_URL") or DEFAULT_ENDPOINT
    return list(dict.fromkeys(url.rstrip("/") for url in (gcsfs, tensorstore)))


def probe(endpoint: str, bucket: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when `endpoint` answers an HTTP request (any status: 401, 404 and 503 are
    answers too), else why not in a few words."""
    url = f"{endpoint}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}?fields=name"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except TimeoutError:
        return f"no answer in {timeout:g} s"
    except (OSError, ValueError, http.client.HTTPException) as e:
        return describe(e)


def unanswered(bucket: str) -> tuple[str, str] | None:
    """(endpoint, why) of the first endpoint that does not answer, or None."""
    for endpoint in endpoints():
        error = probe(endpoint, bucket)
        if error is not None:
            return endpoint, error
    return None


def check_reachable(bucket: str, where: str) -> None:
    """Raises a ConfigError in one line when an endpoint does not answer (once per endpoint
    and process; quick: `START_ATTEMPTS` requests of at most `PROBE_TIMEOUT` seconds)."""
    for endpoint in endpoints():
        if endpoint in _reachable:
            continue
        for attempt in range(START_ATTEMPTS):
            error = probe(endpoint, bucket)
            if error is None:
                _reachable.add(endpoint)
                break
            if attempt + 1 < START_ATTEMPTS:
                time.sleep(1.0)
        else:
            raise ConfigError(
                f"{where}: Cloud Storage at {endpoint} cannot be reached ({error}); nothing was "
                "read or written. Check the network (with an emulator: STORAGE_EMULATOR_HOST "
                "and TENSORSTORE_GCS_HTTP_URL) and run the command again."
            )


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or one it was raised from) is a lost connection, a timeout or a
    retryable HTTP status, as opposed to an answer (a missing object, no permission)."""
    for e in _chain(error):
        if isinstance(e, ConfigError):
            return False
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        classes = {(c.__module__.split(".")[0], c.__name__) for c in type(e).__mro__}
        if classes & _TRANSIENT_CLASSES:
            return True
        code = str(getattr(e, "code", ""))
        if type(e).__name__ == "HttpError" and code in {str(c) for c in TRANSIENT_HTTP}:
            return True
        if isinstance(e, ValueError) and str(e).startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
            return True  # TensorStore's status codes.
    return False


def is_fault(error: BaseException, bucket: str) -> bool:
    """Whether `error` comes from storage that failed: transient, or raised while an
    endpoint does not answer."""
    if isinstance(error, ConfigError):
        return False
    return is_transient(error) or unanswered(bucket) is not None


def give_up(reason: str) -> None:
    """Ends the process: one line (`reason`, then the note) and exit status `EXIT_CODE`.
    Only the first caller prints; any other thread that gets here waits for the end."""
    if not _giving_up.acquire(blocking=False):
        threading.Event().wait()
    try:
        _watchdog.settle()
        note = _settings["note"]
        after = note() if note else "Run the command again when it answers."
        sys.stdout.flush()
        print(f"error: {reason}. {after}", file=sys.stderr, flush=True)
        _exit(EXIT_CODE)
    finally:  # Reached only where `_exit` returns (tests).
        _giving_up.release()


@dataclasses.dataclass(eq=False)
class _Op:
    what: str
    where: str
    bucket: str
    started: float
    done: Callable[[], bool] | None = None
    on_done: Callable[[], None] | None = None


class _Watchdog:
    """The thread that watches registered operations (started with the first one)."""

    def __init__(self):
        self.ops: list[_Op] = []
        self.mutex = threading.Lock()
        self.thread: threading.Thread | None = None
        self.tick_every = 1.0
        self._reset()

    def _reset(self) -> None:
        self.silent_since: float | None = None  # since when the endpoint has not answered
        self.why = ""
        self.last_probe = self.last_notice = -1e9

    def add(self, op: _Op) -> None:
        with self.mutex:
            self.ops.append(op)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="storage-watchdog")
                self.thread.daemon = True
                self.thread.start()

    def remove(self, op: _Op) -> None:
        with self.mutex:
            if op in self.ops:
                self.ops.remove(op)

    def _run(self) -> None:
        while True:
            time.sleep(self.tick_every)
            try:
                self.tick(time.monotonic())
            except Exception as e:  # noqa: BLE001  (the watchdog must outlive any one error)
                log(f"WARNING: the storage watchdog failed once ({describe(e)}).")

    def forget(self, where: str) -> None:
        """Drops the operations on paths under `where` ("": all)."""
        with self.mutex:
            self.ops = [op for op in self.ops if not op.where.startswith(where)]
        self._reset()

    def settle(self) -> None:
        """Retires the operations that are done (their `on_done` runs)."""
        with self.mutex:
            finished = [op for op in self.ops if op.done is not None and op.done()]
            self.ops = [op for op in self.ops if op not in finished]
        for op in finished:
            if op.on_done is not None:
                op.on_done()

    def tick(self, now: float) -> None:
        self.settle()
        with self.mutex:
            waiting = sorted(
                (op for op in self.ops if now - op.started >= PROBE_AFTER), key=lambda o: o.started
            )
        if not waiting:
            self._reset()
            return
        oldest = waiting[0]
        if now - self.last_probe >= PROBE_EVERY:
            self.last_probe = now
            silent = unanswered(oldest.bucket)
            if silent is None:
                self.silent_since, self.why = None, ""
            else:
                self.silent_since = self.silent_since if self.silent_since is not None else now
                self.why = f"{silent[0]}: {silent[1]}"
        if self.silent_since is not None and now - self.silent_since >= limit():
            give_up(
                f"Cloud Storage has not answered for {duration(now - self.silent_since)} "
                f"({oldest.what} {oldest.where}; {self.why})"
            )
            self.forget("")  # Reached only where `give_up` returns (tests).
            return
        every = min(NOTICE_EVERY, max(limit() / 4, 1.0))
        if now - oldest.started >= every and now - self.last_notice >= every:
            self.last_notice = now
            log(notice(oldest, len(waiting) - 1, now, self.silent_since, self.why))


def notice(op: _Op, others: int, now: float, silent_since: float | None, why: str) -> str:
    """The line printed while `op` waits."""
    if silent_since is None:
        state = "the endpoint answers"
    else:
        state = (
            f"no answer for {duration(now - silent_since)} ({why}); the run stops after "
            f"{duration(limit())} without one"
        )
    more = f" ({others} more waiting)" if others else ""
    waited = duration(now - op.started)
    return f"Waiting for Cloud Storage: {op.what} {op.where} for {waited}; {state}{more}."


_watchdog = _Watchdog()


@contextlib.contextmanager
def watch(what: str, where: str, bucket: str) -> Iterator[None]:
    """Registers the operation in the block with the watchdog."""
    op = _Op(what, where, bucket, time.monotonic())
    _watchdog.add(op)
    try:
        yield
    finally:
        _watchdog.remove(op)


def watch_until(
    what: str,
    where: str,
    bucket: str,
    done: Callable[[], bool],
    on_done: Callable[[], None] | None = None,
) -> None:
    """Registers an operation running elsewhere (a background save) until `done()` holds;
    then `on_done()` runs (on the watchdog's thread, or in `give_up`)."""
    _watchdog.add(_Op(what, where, bucket, time.monotonic(), done, on_done))


def forget(where: str) -> None:
    """Stops watching the operations on paths under `where` (a run's end)."""
    _watchdog.forget(where)


def call(what: str, where: str, bucket: str, fn: Callable):
    """`fn()`, retried with backoff while it fails with a transient error, for at most the
    limit; then `give_up`. The endpoint is checked first (`check_reachable`)."""
    check_reachable(bucket, where)
    started, delay = time.monotonic(), 1.0
    with watch(what, where, bucket):
        while True:
            try:
                return fn()
            except Exception as e:
                if not is_transient(e):
                    raise
                waited = time.monotonic() - started
                if waited >= limit():
                    give_up(
                        f"Cloud Storage failed for {duration(waited)} ({what} {where}; "
                        f"{describe(e)})"
                    )
                    raise  # Reached only where `give_up` returns (tests).
                _sleep(min(delay, max(limit() - waited, 0.0)))
                delay = min(2 * delay, MAX_DELAY)


@contextlib.contextmanager
def stop_on_fault(what: str, where: str, bucket: str) -> Iterator[None]:
    """Turns an error that storage caused (`is_fault`) into `give_up`'s one line."""
    try:
        yield
    except Exception as e:
        if is_fault(e, bucket):
            give_up(f"Cloud Storage failed ({what} {where}; {describe(e)})")
        raise
