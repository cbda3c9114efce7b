"""The peers benchmark's parent: starts one worker process per implementation at a length,
takes alternating timed steps from them, and turns their replies into records."""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from reformer.experiments.peers.common import JAX_PLATFORMS, SETTINGS, axial_shape, n_buckets

# The directory that holds the `reformer` package: on the workers' PYTHONPATH, so that a
# Python without this package installed (trax's own environment) imports it.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])


class Worker:
    """One implementation's process (`script --worker IMPL`); replies are read by a thread
    into a queue so that every wait has a timeout."""

    def __init__(self, impl: str, python: str, args, seq_len: int, script: str):
        self.impl, self.seq_len = impl, seq_len
        cmd = [python, os.path.abspath(script), "--worker", impl, "--seq_len", str(seq_len)]
        for name in SETTINGS + ("warmup", "ours_ff_chunk", "device", "matmul_precision"):
            cmd += [f"--{name}", str(getattr(args, name))]
        env = {
            **os.environ,
            "JAX_PLATFORMS": JAX_PLATFORMS[args.device],
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        if args.device == "gpu":  # The workers of one length share the GPU.
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        paths = (PACKAGE_ROOT, env.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(script))),
            env=env,
        )
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._relay_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self.replies.put(json.loads(line))
                except json.JSONDecodeError:
                    self.replies.put({"error": f"bad protocol line: {line[:200]}"})
        self.replies.put(None)  # End of output: the process exited.

    def _relay_stderr(self) -> None:
        prefix = f"[{self.impl} L={self.seq_len}] "
        for line in self.proc.stderr:
            sys.stderr.write(prefix + line)

    def reply(self, timeout: float) -> dict:
        try:
            msg = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return {"error": f"no reply within {timeout:.0f} s (killed)"}
        if msg is None:
            code = self.proc.wait()
            return {"error": f"worker exited with code {code}"}
        return msg

    def send(self, command: str) -> bool:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def ask(self, command: str, timeout: float) -> dict:
        """Sends `command` and waits for the reply (what is left of it if the pipe broke)."""
        return self.reply(0) if not self.send(command) else self.reply(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def trax_available(python: str | None, device: str = "cpu") -> tuple[bool, str]:
    if not python:
        return False, "no --trax_python given (trax lives in its own virtual environment)"
    if not os.path.exists(python):
        return False, f"--trax_python {python} does not exist"
    try:
        proc = subprocess.run(
            [python, "-c", "import trax, jax; print(jax.__version__)"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "JAX_PLATFORMS": JAX_PLATFORMS[device], "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    except subprocess.TimeoutExpired:
        return False, f"importing trax with {python} took over 600 s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"cannot import trax with {python}: {last}"
    return True, ""


def wait_ready(args, workers: dict[str, Worker], seq_len: int) -> tuple[dict, dict]:
    """Each worker's `ready` reply (build and warm-up), and the errors of those that failed."""
    info, errors = {}, {}
    for impl, w in workers.items():
        msg = w.reply(args.start_timeout)
        if "error" in msg:
            errors[impl] = f"start-up: {msg['error']}"
            w.kill()
        else:
            info[impl] = msg
            print(
                f"L={seq_len} {impl}: ready, warm-up steps "
                + ", ".join(f"{s:.2f} s" for s in msg.get("warmup_seconds", [])),
                flush=True,
            )
    return info, errors


def step_timeout(args, times: list[float], warmup_seconds: list[float]) -> float:
    """How long a timed step may take: 10x the first timed step, else 5x the slowest warm-up
    step, and at least `--min_step_timeout`."""
    if times:
        return max(args.min_step_timeout, 10 * times[0])
    return max(args.min_step_timeout, 5 * max(warmup_seconds or [0.0]))


def timed_steps(args, workers, info: dict, errors: dict, seq_len: int) -> tuple[dict, dict]:
    """`--repeats` rounds of one timed step from each ready worker in turn; the seconds and
    losses (after the warm-up's) of each. A failing worker is killed and its error kept."""
    times: dict[str, list[float]] = {impl: [] for impl in info}
    losses = {impl: list(info[impl].get("losses", [])) for impl in info}
    for r in range(args.repeats):
        for impl in list(times):
            if impl in errors:
                continue
            timeout = step_timeout(args, times[impl], info[impl].get("warmup_seconds"))
            time.sleep(args.pause)  # Lets the previous worker's threads go idle.
            msg = workers[impl].ask("step", timeout)
            if "error" in msg:
                errors[impl] = f"step {r}: {msg['error']}"
                workers[impl].kill()
                continue
            times[impl].append(float(msg["seconds"]))
            losses[impl].append(float(msg["loss"]))
            print(
                f"L={seq_len} repeat {r} {impl}: {msg['seconds']:.3f} s, loss {msg['loss']:.4f}",
                flush=True,
            )
    return times, losses


def quit_worker(w: Worker, impl: str, errors: dict) -> tuple[int | None, int | None]:
    """Stops a worker; its peak RSS and peak device bytes (None where it failed)."""
    rss = device_bytes = None
    if impl not in errors:
        msg = w.ask("quit", 120)
        if "error" in msg:
            errors[impl] = f"quit: {msg['error']}"
        else:
            rss, device_bytes = int(msg["peak_rss_bytes"]), msg.get("peak_device_bytes")
    w.kill()
    return rss, device_bytes


def record(args, impl: str, seq_len: int, common: dict, meta: dict, **measured) -> dict:
    """One implementation's record at `seq_len`; `measured` holds `times`, `losses`, `rss`,
    `device_bytes` and `load_average`."""
    times = measured["times"]
    return {
        "impl": impl,
        "reversible": meta.get("reversible"),
        "seq_len": seq_len,
        "step_seconds": statistics.median(times) if times else None,
        "step_seconds_all": times,
        "peak_rss_bytes": measured["rss"],
        "peak_device_bytes": measured["device_bytes"],
        "warmup_seconds": meta.get("warmup_seconds", []),
        "n_params": meta.get("n_params"),
        "losses": measured["losses"],
        "device": meta.get("device", "cpu" if args.device == "cpu" else "gpu"),
        **common,
        "n_buckets": n_buckets(args, seq_len),
        "axial_shape": list(axial_shape(seq_len)),
        "threads": meta.get("threads"),
        # 1-minute load average when the length's workers started and after its steps
        # (above cpu_count: other processes shared the cores).
        "load_average": measured["load_average"],
        "versions": meta.get("versions", common["versions"]),
        "notes": meta.get("notes", ""),
    }


def run_length(args, impls: list[str], seq_len: int, common: dict, script: str) -> list[dict]:
    """Starts one worker per implementation (`script --worker IMPL`), takes `repeats`
    alternating timed steps from each, and returns one record per implementation."""
    load_start = os.getloadavg()[0]
    workers = {}
    for impl in impls:
        python = args.trax_python if impl == "trax" else sys.executable
        workers[impl] = Worker(impl, python, args, seq_len, script)
    info, errors = wait_ready(args, workers, seq_len)
    times, losses = timed_steps(args, workers, info, errors, seq_len)
    load = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    records = []
    for impl in impls:
        rss, device_bytes = quit_worker(workers[impl], impl, errors)
        measured = dict(times=times.get(impl, []), losses=losses.get(impl, []), rss=rss,
                        device_bytes=device_bytes, load_average=load)  # fmt: skip
        r = record(args, impl, seq_len, common, info.get(impl, {}), **measured)
        if impl in errors:
            r["error"] = errors[impl]
            print(f"L={seq_len} {impl}: ERROR {errors[impl]}", flush=True)
        records.append(r)
    return records
