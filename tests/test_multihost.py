"""Scaling out: meshes of fake CPU devices, several processes on localhost, gradient
accumulation, and resuming on another topology. Every multi-device run is a subprocess
(the device count is fixed when JAX starts); every subprocess has a timeout."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer import data
from reformer.model.models import init_params
from reformer.train import train_and_evaluate
from reformer.training import sharding, steps
from reformer.training.state import make_model
from tests.conftest import REPO, checkpoint_steps, read_metrics, run_module
from tests.mesh_runs import small_config

TIMEOUT = 240  # Seconds for any one subprocess; a hung peer fails the test instead of CI.


def cpu_env(n_devices: int) -> dict:
    return {
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": REPO,
    }


def train_losses(workdir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(workdir)]


def train_steps(workdir: str) -> list[int]:
    return [r["step"] for r in read_metrics(workdir)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_overrides(num_steps: int) -> list[str]:
    """`small_config` as command-line overrides of configs/tiny.py."""
    return [
        "--config.model.attention_types=('local', 'lsh')",
        "--config.model.residual=reversible",
        "--config.model.lsh_chunk_len=8",
        "--config.model.local_chunk_len=8",
        "--config.model.n_hashes=2",
        f"--config.train.num_steps={num_steps}",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        f"--config.train.checkpoint_every={num_steps}",
        "--config.eval.num_batches=1",
    ]


def start_processes(
    module: str, workdir: str, n: int, args: list[str], env: dict | None = None
) -> list[subprocess.Popen]:
    """`n` processes of `python -m module` joined through a coordinator on localhost, two
    CPU devices each, with short timeouts so a dead peer fails the others quickly (`env`:
    variables added to this process's environment)."""
    port = free_port()
    env = {**os.environ, **(env or {}), "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "--config",
                "configs/tiny.py",
                "--workdir",
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={n}",
                f"--process_id={i}",
                "--initialization_timeout=60",
                "--heartbeat_timeout=15",
                *args,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]


def finish(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for every process (killing all on a timeout); their outputs."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The small reversible local + LSH model trained 6 steps on this process's 1 device."""
    workdir = str(tmp_path_factory.mktemp("one_device"))
    train_and_evaluate(small_config(6), workdir)
    return workdir


# ---- Pieces, in process ----


def test_fsdp_spec_splits_the_largest_divisible_dimension():
    P = jax.sharding.PartitionSpec
    assert sharding.fsdp_spec((3, 64, 256), 4) == P(None, None, "fsdp")
    assert sharding.fsdp_spec((256, 64), 4) == P("fsdp")
    assert sharding.fsdp_spec((3, 5), 4) == P()  # Nothing divisible: replicated.
    assert sharding.fsdp_spec((), 4) == P()
    assert sharding.fsdp_spec((256, 64), 1) == P()


def test_gradient_accumulation_equals_the_whole_batch():
    """grad_accum_steps=4 gives the loss and gradients of the whole batch (relative 1e-5)."""
    config = small_config()
    config.train.batch_size = 8
    model = make_model(config)
    params = init_params(model, jax.random.key(0), 1, config.data.seq_len)
    batch = jax.tree.map(jnp.asarray, next(data.make_train_stream(config)))
    batch["weights"] = batch["weights"].at[:3].set(0.0)  # Unequal weights per micro-batch.
    keys = jax.random.key(1), jax.random.key(2)

    def run(accum):
        fn = jax.jit(
            lambda p, b: steps.loss_sums_and_grads(p, b, *keys, model=model, accum_steps=accum)
        )
        return fn(params, batch)

    (sums1, grads1), (sums4, grads4) = run(1), run(4)
    np.testing.assert_allclose(sums4["loss_sum"], sums1["loss_sum"], rtol=1e-5)
    np.testing.assert_allclose(sums4["weight_sum"], sums1["weight_sum"])
    flat1, flat4 = (
        jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads1, grads4)
    )
    assert float(jnp.linalg.norm(flat1)) > 0
    rel = float(jnp.linalg.norm(flat4 - flat1) / jnp.linalg.norm(flat1))
    assert rel < 1e-5, rel
    # Micro-batch i takes rows i, i + 4, ...: each device's block contributes to every one.
    mbs = steps.micro_batches({"x": jnp.arange(8)}, 4)["x"]
    assert mbs.tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_process_rows_of_a_single_process_are_the_whole_batch():
    mesh = sharding.make_mesh()
    assert sharding.process_rows(mesh, 8) == slice(0, 8)


# ---- Fake devices, one process ----


def test_meshes_of_eight_devices_match_one_device(one_device, tmp_path):
    """data=2 x fsdp=4 and fsdp=8 give the single-device losses, and with fsdp the parameters
    really are split (each device holds a part). (Data parallelism alone over four devices:
    tests/test_train.py.)"""
    out = str(tmp_path / "runs.json")
    meshes = ["data=2,fsdp=4", "data=1,fsdp=8"]
    run = subprocess.run(
        [sys.executable, "tests/mesh_runs.py", out, str(tmp_path), *meshes],
        cwd=REPO,
        env={**os.environ, **cpu_env(8)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    with open(out) as f:
        results = json.load(f)
    reference = train_losses(one_device)
    assert len(reference) == 6
    for spec in meshes:
        r = results[spec]
        assert r["devices"] == 8
        np.testing.assert_allclose(r["losses"], reference, rtol=1e-5, err_msg=spec)
    for spec, fsdp in (("data=2,fsdp=4", 4), ("data=1,fsdp=8", 8)):
        shards = results[spec]["shards"]
        split = {k: v for k, v in shards.items() if v[1] < v[0]}
        assert all(v[1] * fsdp == v[0] for v in split.values()), split
        # Every large parameter (embeddings, projections, feed-forward) is split.
        big = [k for k, v in shards.items() if v[0] >= 256]
        assert big and all(k in split for k in big), sorted(set(big) - set(split))


def test_fsdp_checkpoint_resumes_on_another_topology(one_device, tmp_path):
    """A checkpoint written with fsdp=4 (4 devices) resumes with data=2 (2 devices) and
    continues with the single-device losses."""
    workdir = str(tmp_path / "w")
    args = ["reformer.train", "--config", "configs/tiny.py", "--workdir", workdir]
    first = run_module(
        [*args, *small_overrides(3), "--config.mesh.fsdp=4", "--config.mesh.data=1"],
        env=cpu_env(4),
        timeout=TIMEOUT,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert checkpoint_steps(workdir) == [3]
    second = run_module(
        [*args, *small_overrides(6), "--config.mesh.data=2"],
        env=cpu_env(2),
        timeout=TIMEOUT,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from" in second.stdout and "mesh {'data': 2, 'fsdp': 1}" in second.stdout
    assert train_steps(workdir) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(train_losses(workdir), train_losses(one_device), rtol=1e-5)


# ---- Several processes on localhost ----


def test_two_processes_train_resume_and_evaluate_like_one(one_device, tmp_path):
    """Two processes of two CPU devices each: the losses of one device; resumed together
    with FSDP over all four devices; only process 0 writes metrics; `reformer.evaluate` runs
    as two processes too."""
    workdir = str(tmp_path / "w")
    outs = finish(start_processes("reformer.train", workdir, 2, small_overrides(3)))
    assert "Process 0 of 2: 2 local device(s) of 4" in outs[0]
    assert "Process 1 of 2: 2 local device(s) of 4" in outs[1]
    assert "step       3/3" in outs[0] and "step       3/3" not in outs[1]
    outs = finish(
        start_processes(
            "reformer.train",
            workdir,
            2,
            [*small_overrides(6), "--config.mesh.fsdp=4", "--config.mesh.data=1"],
        )
    )
    assert all("Resumed from" in out and "at step 3" in out for out in outs)
    assert checkpoint_steps(workdir) == [3, 6]
    assert train_steps(workdir) == [1, 2, 3, 4, 5, 6]  # Written once: by process 0 only.

    np.testing.assert_allclose(train_losses(workdir), train_losses(one_device), rtol=1e-5)

    outs = finish(start_processes("reformer.evaluate", workdir, 2, small_overrides(6)))
    with open(os.path.join(workdir, "eval_validation.json")) as f:
        two_process_eval = json.load(f)
    config = small_config(6)
    from reformer.evaluation.checkpoint import score_checkpoint

    here, _ = score_checkpoint(config, workdir)
    assert two_process_eval["step"] == here["step"] == 6
    np.testing.assert_allclose(two_process_eval["loss"], here["loss"], rtol=1e-5)


# Ctrl-C takes the same path as SIGTERM (`StopRequests`); it runs with the slow tests.
@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["SIGTERM", "Ctrl-C"],
)
def test_a_stop_request_to_one_process_stops_both_at_the_same_step(sig, tmp_path):
    """SIGTERM (preemption) or one Ctrl-C to process 1 only: both processes stop at the same
    step, one checkpoint is written there, and both exit with status 0."""
    workdir = str(tmp_path / "w")
    procs = start_processes(
        "reformer.train",
        workdir,
        2,
        [
            "--config.train.num_steps=100000",
            "--config.train.log_every=5",
            "--config.train.checkpoint_every=100000",
            "--config.train.eval_every=0",
        ],
    )
    try:
        for line in procs[0].stdout:  # Process 0 prints the progress lines.
            if "step " in line and "/100000" in line:
                break
        procs[1].send_signal(sig)
        outs = finish(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    stops = []
    for out in outs:
        line = next(ln for ln in out.splitlines() if "all processes stop at step" in ln)
        stops.append(int(line.rsplit(" ", 1)[1].rstrip(".")))
    assert stops[0] == stops[1], stops
    assert checkpoint_steps(workdir) == [stops[0]]


# On a local workdir with the slow tests (the fast suite loses process 1 with a bucket
# workdir: tests/test_gcs.py); losing process 0, the coordinator, ends the other at once.
@pytest.mark.slow
@pytest.mark.parametrize("lost", [1, 0])
def test_a_process_killed_hard_is_named_in_one_line_by_the_survivor(lost, tmp_path):
    """kill -9 of one process (its command, the thin parent of training/supervise.py, and with
    it the training process): the other ends non-zero within the heartbeat timeout with one
    line naming the lost process, the last complete checkpoint and how to resume, and no
    stack dumps."""
    workdir = str(tmp_path / "w")
    procs = start_processes(
        "reformer.train",
        workdir,
        2,
        [
            "--config.train.num_steps=100000",
            "--config.train.log_every=1",
            "--config.train.checkpoint_every=5",
            "--config.train.eval_every=0",
        ],
    )
    survivor = procs[1 - lost]
    try:
        for line in procs[0].stdout:  # Until a checkpoint exists and training goes on.
            if re.search(r"step +(1[2-9]|[2-9]\d)/100000", line):
                break
        procs[lost].send_signal(signal.SIGKILL)
        out = survivor.communicate(timeout=TIMEOUT)[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert survivor.returncode == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    who = "process 0 of 2 \\(the coordinator\\)" if lost == 0 else "process 1 of 2"
    m = re.fullmatch(
        rf"error: {who} was lost \(it stopped sending heartbeats to the coordination "
        rf"service\); this process \({1 - lost}\) stopped too\. Last complete checkpoint: step "
        rf"(\d+) in {re.escape(workdir)}\. Restart all processes with the same command to "
        r"resume from it\.",
        last,
    )
    assert m, out[-3000:]
    assert int(m[1]) == max(checkpoint_steps(workdir)) >= 5
    assert "Check failure stack trace" not in out and "Fatal Python error" not in out
