"""One writer per workdir: the lock `WORKDIR/lock.json` that `reformer.train` holds while it runs.

The lock is a small JSON object naming its holder: host, process id (and the process's start
time, so a reused id is not mistaken for it), a run id, when the run started and when it last
renewed the lock, and how often it renews it. It is created atomically (`storage.create_new`:
an exclusive create locally, `ifGenerationMatch=0` on Cloud Storage), renewed every
`train.lock_renew_every` seconds by a background thread, and deleted when the run ends
normally, with an error, or after SIGTERM / Ctrl-C. Every change is conditional on the lock
being as last read (`storage.replace_if`, `storage.delete_if`), so of two runs racing for it
exactly one wins.

A second run finds the lock and is refused in one line naming the holder, unless the holder
is gone:
- its process was on this host and no longer exists (kill -9, a crash): taken over at once;
- otherwise, when it has missed `MISSED_RENEWALS` renewals (3 x 30 s by default; the holder's
  own interval counts): taken over, saying so. Hosts' clocks must agree to well within that.
A run whose renewal finds the lock taken by another run (it was presumed dead: stopped, or
cut off from storage for longer than that) stops at once without saving, with one line and
exit status `EXIT_LOST`, so that only one run writes.

The processes of a multi-process run are one writer: process 0 takes and renews the lock
and tells the others whether the run may start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from reformer import storage
from reformer.console import log
from reformer.errors import ConfigError

LOCK_FILE = "lock.json"
MISSED_RENEWALS = 3
EXIT_LOST = 73  # The workdir was taken over by another run while this one could not renew.
_exit = os._exit  # Replaced in tests.


def _process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    """Whether the process `pid` of this host exists and is the one that started at `start`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # It exists, under another user.
    now = _process_start(pid)
    return start is None or now is None or now == start


@dataclasses.dataclass
class Holder:
    """What the lock says about the run holding it."""

    host: str
    pid: int
    run_id: str
    started: float
    renewed: float
    renew_every: float
    pid_start: int | None = None

    def to_bytes(self) -> bytes:
        record = dataclasses.asdict(self)
        record["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
        return (json.dumps(record, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        """The holder a lock names; None when it cannot be read."""
        try:
            record = json.loads(data)
            fields = {f.name for f in dataclasses.fields(cls)}
            holder = cls(**{k: v for k, v in record.items() if k in fields})
            holder.pid, holder.renewed = int(holder.pid), float(holder.renewed)
            holder.started, holder.renew_every = float(holder.started), float(holder.renew_every)
            return holder
        except (ValueError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, process {self.pid}, running since {since}"


def stale(holder: Holder | None, now: float) -> str | None:
    """Why the lock of `holder` may be taken over, or None when its run may be alive."""
    if holder is None:
        return "it cannot be read"
    if holder.host == socket.gethostname() and not _alive(holder.pid, holder.pid_start):
        return f"its process {holder.pid} on this host is gone"
    silent = now - holder.renewed
    if silent > MISSED_RENEWALS * holder.renew_every:
        return (
            f"it was last renewed {silent:.0f} s ago ({MISSED_RENEWALS} renewals of "
            f"{holder.renew_every:g} s missed)"
        )
    return None


class WorkdirLock:
    """The lock of one workdir, for one run: `acquire`, `start` (renewals), `release`."""

    def __init__(self, workdir: str, renew_every: float):
        self.workdir, self.renew_every = workdir, float(renew_every)
        self.path = storage.join(workdir, LOCK_FILE)
        now, pid = time.time(), os.getpid()
        self.me = Holder(
            socket.gethostname(), pid, uuid.uuid4().hex, now, now, self.renew_every,
            _process_start(pid),
        )  # fmt: skip
        self.version: str | None = None
        self.renewed_at = time.monotonic()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fresh(self) -> bytes:
        self.me.renewed = time.time()
        return self.me.to_bytes()

    def acquire(self) -> str | None:
        """Takes the lock; None when taken, else the one-line refusal naming the holder."""
        for _ in range(10):  # Each pass ends unless another run changed the lock meanwhile.
            data = self._fresh()
            self.version = storage.create_new(self.path, data)
            if self.version:
                return None
            current = storage.read_versioned(self.path)
            if current is None:
                continue  # Released in between.
            holder = Holder.from_bytes(current[0])
            if holder is not None and holder.run_id == self.me.run_id:
                self.version = current[1]  # Our own create, answered late and retried.
                return None
            reason = stale(holder, time.time())
            if reason is None:
                return self._refusal(holder)
            self.version = storage.replace_if(self.path, data, current[1])
            if self.version:
                whose = f"of {holder.describe()}" if holder else "it found"
                log(f"Took over the lock {whose} in {self.workdir}: {reason}.")
                return None
        return (
            f"--workdir: {self.workdir}: its lock {self.path} keeps changing; is another run "
            "starting there?"
        )

    def _refusal(self, holder: Holder) -> str:
        ago = max(time.time() - holder.renewed, 0.0)
        wait = MISSED_RENEWALS * holder.renew_every
        return (
            f"--workdir: {self.workdir} is in use by another training run ({holder.describe()}; "
            f"lock renewed {ago:.0f} s ago). Stop that run first, or use another --workdir. A "
            f"lock not renewed for {wait:g} s is taken over; if its run is gone for good, "
            f"delete {self.path}."
        )

    def start(self) -> None:
        """Renews the lock every `renew_every` seconds on a background thread."""
        self._thread = threading.Thread(target=self._renewals, name="workdir-lock", daemon=True)
        self._thread.start()

    def _renewals(self) -> None:
        while not self._stop.wait(self.renew_every):
            self.renew()

    def renew(self) -> None:
        """Renews the lock now; a lock taken by another run ends this process (`EXIT_LOST`)."""
        with self._mutex:
            if self.version is None:  # Released (or never taken).
                return
            data = self._fresh()
            version = storage.replace_if(self.path, data, self.version)
            if version is None:
                current = storage.read_versioned(self.path)
                if current is None or current[0] != data:  # (equal: our write, retried)
                    self._lost(current)
                    return
                version = current[1]
            self.version, self.renewed_at = version, time.monotonic()

    def confirm(self) -> None:
        """Before a save: renews the lock unless that was done within `renew_every`, so that a
        run cut off for longer finds out whether it still holds the workdir."""
        if time.monotonic() - self.renewed_at > self.renew_every:
            self.renew()

    def _lost(self, current: tuple[bytes, str] | None) -> None:
        holder = Holder.from_bytes(current[0]) if current else None
        who = f"by another run ({holder.describe()})" if holder else "(its lock was deleted)"
        print(
            f"error: {self.workdir} was taken over {who} while this run could not renew its "
            f"lock {self.path}; stopping at once, without saving, so that one run writes there.",
            file=sys.stderr,
            flush=True,
        )
        _exit(EXIT_LOST)

    def release(self) -> None:
        """Stops the renewals and deletes the lock if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._mutex:
            if self.version is not None:
                storage.delete_if(self.path, self.version)
                self.version = None


def _agreed(refusal: str | None) -> str | None:
    """Process 0's refusal (or None) in every process of a multi-process run."""
    import jax

    if jax.process_count() == 1:
        return refusal
    import numpy as np
    from jax.experimental import multihost_utils

    size = 2048
    encoded = (refusal or "").encode()[:size]
    buffer = np.zeros(size, np.uint8)
    buffer[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    agreed = bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).rstrip(b"\0")
    return agreed.decode(errors="replace") or None


@contextlib.contextmanager
def hold(workdir: str, renew_every: float) -> Iterator[WorkdirLock | None]:
    """Holds the workdir's lock in the block (process 0; the lock in it, None elsewhere). A
    lock held by another live run is a ConfigError in every process of this one."""
    import jax

    lock = WorkdirLock(workdir, renew_every) if jax.process_index() == 0 else None
    refusal = _agreed(lock.acquire() if lock else None)
    if refusal:
        raise ConfigError(refusal)
    if lock:
        lock.start()
    try:
        yield lock
    finally:
        if lock:
            lock.release()
