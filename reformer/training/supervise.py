"""A thin parent for each process of a multi-process run, which names a lost peer in one line.

When a process of a multi-process job dies hard (kill -9, a lost host), JAX's coordination
service notices the missing heartbeats and ends every other process from C++ (an abort that
Python cannot catch), after `--heartbeat_timeout` seconds, or at once when process 0, which
hosts the service, is the one lost. What the survivors print is a Gloo traceback (which names
a port, not a process), a fatal log line and a dump of every thread. So each process of a
multi-process `reformer.train` / `reformer.evaluate` runs as a child of this parent, which
passes the child's output through, reads its stderr for the coordination service's verdict,
drops the stack dumps that follow it, and ends with one line:

    error: process 1 of 2 was lost (it stopped sending heartbeats); this process (0) stopped
    too. Last complete checkpoint: step 20 in gs://b/run. Restart all processes with the same
    command to resume from it.

and exit status 1. SIGTERM and SIGINT are passed to the child (it runs in its own process
group, so a terminal's Ctrl-C reaches it once, through here); if this parent is killed, the
child is killed too (Linux `PR_SET_PDEATHSIG`), so a dead host never leaves a training process
that keeps the job waiting. The parent never touches JAX's devices.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from reformer import storage

ENV = "REFORMER_SUPERVISED"  # Set in the child, so that it runs the command itself.

FATAL = "Terminating process because the JAX distributed service detected fatal errors"
UNHEALTHY = "The following tasks are unhealthy (stopped sending heartbeats):"
LEADER_LOST = "Either the leader task was preempted/died/restarted unexpectedly"
HEARTBEAT = re.compile(r"\bTask (\d+) heartbeat timeout")
# A task in the unhealthy list: "1" (JAX 0.10) or "/job:jax_worker/replica:0/task:1".
TASK = re.compile(r"^(?:/job:[\w-]+/replica:\d+/task:)?(\d+)$")
STACK_DUMP = ("*** Check failure stack trace", "    @ ")


class Verdict:
    """What the child's stderr says about lost processes."""

    def __init__(self):
        self.fatal = False  # The coordination service ended the child.
        self.leader_lost = False  # Process 0 (the service's host) is gone.
        self.lost: set[int] = set()
        self._in_list = False
        self._dumping = False

    def read(self, line: str) -> bool:
        """Takes one stderr line; True when it should be shown (not a stack dump)."""
        text = line.strip()
        if self._in_list:
            if match := TASK.match(text):
                self.lost.add(int(match[1]))
                return True
            self._in_list = False
        self._in_list = self._in_list or UNHEALTHY in line
        self.fatal = self.fatal or FATAL in line
        self.leader_lost = self.leader_lost or LEADER_LOST in line
        self.lost.update(int(m) for m in HEARTBEAT.findall(line))
        if self.fatal and line.startswith("Fatal Python error: Aborted"):
            self._dumping = True  # faulthandler's dump of every thread follows.
        return not (self._dumping or (self.fatal and line.startswith(STACK_DUMP)))

    def message(self, own: int | None, count: int | None, checkpoint: str) -> str | None:
        """The one line naming the lost process(es), or None when none was reported."""
        lost = sorted(self.lost - {own})
        if not lost and self.leader_lost and own != 0:
            lost = [0]
        if not (self.fatal or lost):
            return None
        of = f" of {count}" if count else ""
        if not lost:
            who = "another process"
        elif len(lost) == 1:
            who = f"process {lost[0]}{of}" + (" (the coordinator)" if lost == [0] else "")
        else:
            who = f"processes {', '.join(map(str, lost))}{of}"
        this = f" ({own})" if own is not None else ""
        return (
            f"error: {who} was lost (it stopped sending heartbeats to the coordination "
            f"service); this process{this} stopped too. {checkpoint} Restart all processes "
            "with the same command to resume from it."
        )


# The object orbax writes last into a complete step on Cloud Storage (its constant; this module
# must not import orbax, which imports JAX: tests/test_storage.py checks the two are equal).
COMMIT_FILE = "commit_success.txt"


def last_checkpoint(workdir: str | None) -> str:
    """ "Last complete checkpoint: step N in WORKDIR." from a listing (no JAX, no restore)."""
    if not workdir:
        return ""
    directory = storage.join(workdir, "checkpoints")
    try:
        names = storage.listdir(directory)
        steps = [
            int(name)
            for name in names
            if name.isdigit()
            and (
                not storage.is_remote(directory)
                or storage.exists(storage.join(directory, name, COMMIT_FILE))
            )
        ]
    except Exception as e:  # noqa: BLE001  (the line must come out whatever storage says)
        return f"(The checkpoints in {workdir} could not be listed: {type(e).__name__}.)"
    if not steps:
        return f"No complete checkpoint in {workdir} yet (a restart starts from scratch)."
    return f"Last complete checkpoint: step {max(steps)} in {workdir}."


def _flag_values(argv: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` pairs of `argv` (the last of a repeated flag)."""
    values = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
        values[name] = value
    return values


def exit_if_parent(program: str) -> None:
    """Before the command imports JAX: when its flags make it one process of several
    (`--num_processes` > 1) and it is not yet the supervised child, run it as the child of
    this process and exit with the child's status (`supervise`). Jobs whose processes are
    found by JAX's cluster detection (no flags) are supervised by `cli.run` instead."""
    if os.environ.get(ENV):
        return
    values = _flag_values(sys.argv[1:])
    count, own = values.get("num_processes", ""), values.get("process_id", "")
    if not (count.isdigit() and int(count) > 1):
        return
    sys.exit(
        supervise(
            f"reformer.{program}",
            sys.argv[1:],
            int(own) if own.isdigit() else None,
            int(count),
            values.get("workdir"),
        )
    )


def _die_with_parent() -> None:
    """In the child, before it runs: SIGKILL when the parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def supervise(
    module: str, argv: list[str], own: int | None, count: int | None, workdir: str | None
) -> int:
    """Runs `python -m module argv...` as the child; its exit status (1 with the one line when
    the coordination service ended it for a lost process)."""
    child = subprocess.Popen(
        [sys.executable, "-m", module, *argv],
        env={**os.environ, ENV: "1"},
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    verdict = Verdict()
    for raw in child.stderr:
        line = raw.decode(errors="replace")
        if verdict.read(line):
            sys.stderr.write(line)
            sys.stderr.flush()
    rc = child.wait()
    message = verdict.message(own, count, last_checkpoint(workdir)) if rc != 0 else None
    if message:
        print(message, file=sys.stderr, flush=True)
        return 1
    return rc if rc >= 0 else 128 - rc
