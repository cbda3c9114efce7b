"""Metrics: JSON lines (the source of truth), TensorBoard events and a progress line."""

from __future__ import annotations

import json
import math
import os
import time

from tensorboard.summary import Writer


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def keep_records_up_to(path: str, step: int) -> int:
    """Drops the records of steps after `step` (and a torn last line) from a JSON-lines file,
    atomically; returns how many were dropped. A run resumed from the checkpoint of `step`
    writes those steps again, so each step stays in the file once."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


class MetricsWriter:
    """Appends records to `WORKDIR/metrics.jsonl` and TensorBoard events under WORKDIR/tb.

    `start_step`: the step training resumes from; records of later steps (written before a
    crash or kill) are dropped first, so each step appears once.
    """

    def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        if enabled:
            path = os.path.join(workdir, "metrics.jsonl")
            dropped = keep_records_up_to(path, start_step)
            if dropped:
                log(f"metrics.jsonl: dropped {dropped} record(s) after step {start_step}.")
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            self._tb = Writer(os.path.join(workdir, "tb"))

    def write(self, record: dict) -> None:
        """One record: `step`, `split` and scalar values."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in record.items():
            if k not in ("step", "split", "time") and isinstance(v, int | float):
                self._tb.add_scalar(f"{record['split']}/{k}", float(v), record["step"])
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def progress_line(record: dict, num_steps: int) -> str:
    """One human-readable line of a training record."""
    eta = (
        (num_steps - record["step"]) / record["steps_per_sec"]
        if record["steps_per_sec"] > 0
        else float("inf")
    )
    return (
        f"step {record['step']:>7d}/{num_steps} | loss {record['loss']:.4f} | "
        f"bits/tok {record['bits_per_token']:.4f} | acc {record['accuracy']:.4f} | "
        f"{record['steps_per_sec']:.2f} steps/s | {record['tokens_per_sec']:,.0f} tok/s | "
        f"ETA {_fmt_duration(eta)}"
    )


def log(line: str) -> None:
    """A timestamped line on stdout (library INFO logs stay quiet at absl's default level)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
