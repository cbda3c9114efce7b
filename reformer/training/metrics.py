"""Metrics: JSON lines (the source of truth), TensorBoard events and a progress line.

In a Cloud Storage workdir nothing can be appended to (an append overwrites), so each write
uploads the whole file: `metrics.jsonl` as kept in memory, and this writer's TensorBoard event
file, written locally and copied after every flush. Each writer (each run segment) has its own
event file, so a restart never replaces the events of an earlier segment.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time

from tensorboard.summary import Writer

from reformer import storage
from reformer.console import log


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
    if not storage.exists(path):
        return 0
    kept, dropped = [], 0
    for line in storage.read_text(path).splitlines(keepends=True):
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
        storage.write_text(path, "".join(kept))
    return dropped


class MetricsWriter:
    """Appends records to `WORKDIR/metrics.jsonl` and TensorBoard events under WORKDIR/tb.

    `start_step`: the step training resumes from; records of later steps (written before a
    crash or kill) are dropped first, so each step appears once.
    """

    def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        self._path = storage.join(workdir, "metrics.jsonl")
        dropped = keep_records_up_to(self._path, start_step)
        if dropped:
            log(f"metrics.jsonl: dropped {dropped} record(s) after step {start_step}.")
        self._tb_dir = storage.join(workdir, "tb")
        self._remote = storage.is_remote(workdir)
        if self._remote:
            self._lines = storage.read_text(self._path) if storage.exists(self._path) else ""
            self._tb_local = tempfile.mkdtemp(prefix="reformer_tb_")
            self._tb = Writer(self._tb_local)
        else:
            self._jsonl = open(self._path, "a")  # noqa: SIM115
            self._tb = Writer(self._tb_dir)

    def write(self, record: dict) -> None:
        """One record: `step`, `split` and scalar values."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        line = json.dumps(record) + "\n"
        if self._remote:
            self._lines += line
            storage.write_text(self._path, self._lines)
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for k, v in record.items():
            if k not in ("step", "split", "time") and isinstance(v, int | float):
                self._tb.add_scalar(f"{record['split']}/{k}", float(v), record["step"])
        self._tb.flush()
        self._upload_events()

    def _upload_events(self) -> None:
        """Copies this writer's event file(s), whole, to WORKDIR/tb (Cloud Storage only)."""
        if self._remote:
            for name in os.listdir(self._tb_local):
                local = os.path.join(self._tb_local, name)
                with open(local, "rb") as f:
                    storage.path(storage.join(self._tb_dir, name)).write_bytes(f.read())

    def close(self) -> None:
        if not self.enabled:
            return
        self._tb.close()
        if self._remote:
            self._upload_events()
            shutil.rmtree(self._tb_local, ignore_errors=True)
        else:
            self._jsonl.close()


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


def summarize(sums: dict) -> dict:
    """Mean loss (nats/token), bits per token and accuracy from summed metrics."""
    w = max(float(sums["weight_sum"]), 1.0)
    loss = float(sums["loss_sum"]) / w
    return {
        "loss": loss,
        "bits_per_token": loss / math.log(2),
        "accuracy": float(sums["correct_sum"]) / w,
        "tokens": int(round(float(sums["weight_sum"]))),
    }


def eval_settings(config) -> dict:
    """How an evaluation attended: attention types and, where LSH ran, its hash rounds."""
    types = tuple(config.eval.attention_types) or tuple(config.model.attention_types)
    out: dict = {"attention_types": list(types)}
    if "lsh" in types:
        out["n_hashes"] = config.eval.n_hashes or config.model.n_hashes
    if config.eval.cached:
        out["cached"] = True
    return out
