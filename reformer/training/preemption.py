"""Stopping on request: SIGTERM (preemption) or Ctrl-C makes every process stop at the same
step, save one checkpoint and exit cleanly; a second Ctrl-C exits at once.

One process: Python handlers set a flag that the loop reads after each step. Several
processes: a flag per process could stop two hosts at different steps and leave one waiting
in a collective, so the agreement is JAX's preemption service (started by
`jax.distributed.initialize`): its SIGTERM handler tells the coordinator, and
`multihost_utils.reached_preemption_sync_point(step)`, called every step by every process,
turns True at the same step everywhere. Ctrl-C is forwarded to it as a SIGTERM to this
process, so no Python SIGTERM handler replaces JAX's there.
"""

from __future__ import annotations

import os
import signal

import jax

from reformer.console import log


class StopRequests:
    """Context manager installing the handlers; `should_stop(step)` after each step."""

    def __init__(self):
        self.multi_process = jax.process_count() > 1
        self._requested = False
        self._interrupts = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        signals = [signal.SIGINT] if self.multi_process else [signal.SIGINT, signal.SIGTERM]
        for sig in signals:
            handler = self._on_interrupt if sig == signal.SIGINT else self._on_terminate
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # Not the main thread: no signal handling.
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _on_terminate(self, signum, frame) -> None:
        log("SIGTERM received: saving a checkpoint and stopping.")
        self._requested = True

    def _on_interrupt(self, signum, frame) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            log("Second Ctrl-C: exiting now, without saving.")
            os._exit(130)
        log("Ctrl-C: saving a checkpoint and stopping (press Ctrl-C again to exit at once).")
        if self.multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # To JAX's preemption notifier.
        else:
            self._requested = True

    def should_stop(self, step: int) -> bool:
        """True at the step where every process stops (call once per step, in every process)."""
        if not self.multi_process:
            return self._requested
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            log(f"Stop requested (SIGTERM or Ctrl-C): all processes stop at step {step}.")
            return True
        return False
