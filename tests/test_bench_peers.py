"""scripts/bench_peers.py: a toy-sized run of every installed implementation, end to end."""

import importlib.util
import json
import math
import os
import re

import pytest

from reformer.experiments.peers.common import axial_dims, axial_shape
from reformer.experiments.peers.report import memory_key
from tests.conftest import run_script

REQUIRED = {
    "impl",
    "reversible",
    "seq_len",
    "step_seconds",
    "step_seconds_all",
    "peak_rss_bytes",
    "device",
    "n_layers",
    "d_model",
    "d_ff",
    "n_heads",
    "d_head",
    "chunk",
    "n_buckets",
    "n_hashes",
    "batch",
    "versions",
    "cpu",
    "threads",
}


def installed_impls() -> list[str]:
    """Our model and the PyTorch peers whose packages are installed (trax is left out: it
    needs its own virtual environment)."""
    have = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    impls = ["ours"]
    if have("torch") and have("transformers"):
        impls.append("hf")
    if have("torch") and have("reformer_pytorch"):
        impls.append("lucidrains")
    return impls


@pytest.mark.parametrize("seq_len", [128, 4096, 16384, 96])
def test_axial_shape_factors_the_length(seq_len):
    a, b = axial_shape(seq_len)
    assert a * b == seq_len and a >= b >= 1
    assert sum(axial_dims(512)) == 512


def test_toy_run_of_every_installed_implementation(tmp_path):
    impls = installed_impls()
    out = tmp_path / "peers.json"
    proc = run_script(
        "bench_peers.py",
        [
            "--n_layers=2",
            "--d_model=32",
            "--d_ff=64",
            "--n_heads=2",
            "--d_head=16",
            "--chunk=16",
            "--n_hashes=2",
            "--seq_lens=128",
            "--batch=1",
            "--repeats=2",
            "--warmup=1",
            "--pause=0",
            f"--impls={','.join(impls)}",
            f"--out={out}",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert sorted(r["impl"] for r in records) == sorted(impls)
    for r in records:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert "error" not in r, r["error"]
        assert r["seq_len"] == 128 and r["n_buckets"] == 128 // 16 and r["device"] == "cpu"
        assert len(r["step_seconds_all"]) == 2
        assert all(math.isfinite(t) and t > 0 for t in r["step_seconds_all"])
        assert math.isfinite(r["step_seconds"]) and r["step_seconds"] > 0
        assert r["peak_rss_bytes"] > 0
        assert all(math.isfinite(x) for x in r["losses"])
        assert r["reversible"] is True  # ours, hf and lucidrains all run reversibly.
    assert (tmp_path / "peers.png").exists()
    for impl in impls[1:]:  # The table has our ratio against every peer.
        assert any(line.startswith(f"| 128 | {impl} |") for line in proc.stdout.splitlines())


def test_profile_step_groups_the_operations_of_one_step():
    """scripts/profile_step.py on the same model at 256 tokens: the shares add up and the
    step's products are found."""
    proc = run_script("profile_step.py", ["--seq_len=256", "--top=3", "--repeats=2"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = [float(m) for m in re.findall(r"(\d+\.\d)%", proc.stdout)]
    assert abs(sum(shares) - 100.0) < 0.5, proc.stdout
    assert "products with weights" in proc.stdout and "LSH block products" in proc.stdout
    # The kernel timed alone: 6 layers of (forward + backward), set against the step.
    step_s = float(re.search(r"step: (\d+\.\d+) s", proc.stdout).group(1))
    kernel = re.search(
        r"forward (\d+\.\d) ms, backward (\d+\.\d) ms .* = (\d+\.\d+) s, .* the rest of the"
        r" step: (-?\d+\.\d+) s",
        proc.stdout,
    )
    assert kernel, proc.stdout
    fwd_ms, bwd_ms, total_s, rest_s = map(float, kernel.groups())
    assert fwd_ms > 0 and bwd_ms > 0
    assert abs(total_s - 6 * (fwd_ms + bwd_ms) / 1e3) < 0.011
    assert abs(rest_s - (step_s - total_s)) < 0.011


def test_memory_compared_is_the_gpus_where_there_is_any():
    cpu = [{"peak_rss_bytes": 3, "peak_device_bytes": None}]
    gpu = [{"peak_rss_bytes": 3, "peak_device_bytes": 5}]
    assert memory_key(cpu) == ("peak_rss_bytes", "peak RSS")
    assert memory_key(gpu) == ("peak_device_bytes", "peak GPU memory")


def test_gpu_run_without_a_gpu_fails_with_a_clear_error(tmp_path):
    """`--device gpu` where neither JAX nor PyTorch sees a GPU: every worker's record names
    the missing device and the run exits non-zero (no CPU timing passed off as a GPU's)."""
    if "hf" not in installed_impls():
        pytest.skip("needs torch and transformers for the PyTorch side")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    out = tmp_path / "peers.json"
    proc = run_script(
        "bench_peers.py",
        ["--n_layers=1", "--d_model=32", "--d_ff=64", "--n_heads=2", "--d_head=16",
         "--chunk=16", "--n_hashes=1", "--seq_lens=64", "--repeats=1", "--pause=0",
         "--impls=ours,hf", "--device=gpu", f"--out={out}"],
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:]
    records = json.loads(out.read_text())
    assert sorted(r["impl"] for r in records) == ["hf", "ours"]
    for r in records:
        assert "--device gpu" in r["error"] and r["step_seconds"] is None, r


def test_cpu_parallelism_runs_every_case_pinned_and_on_all_cores(tmp_path):
    """scripts/cpu_parallelism.py at its small size: each case once pinned to one core and
    once on all of them, the split product on two devices, the records and the plot."""
    out = tmp_path / "par.json"
    args = ["--size=small", "--repeats=2", "--rounds=1", f"--out={out}"]
    proc = run_script("cpu_parallelism.py", args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    n_cores = len(os.sched_getaffinity(0))
    cases = {"large_product", "block_products", "independent_loops"}
    cases |= {"kernel_forward", "kernel_backward"}
    for case in cases:
        got = {r["cores"] for r in records if r["case"] == case and r["devices"] == 1}
        assert got == {1, n_cores}, (case, got)
    assert all(r["value"] > 0 and r["n_cores"] == n_cores for r in records)
    assert all(len(r["values"]) == 1 and r["values"][0] == r["value"] for r in records)
    units = {r["case"]: r["unit"] for r in records}
    assert units["large_product"] == units["block_products"] == "GFLOP/s"
    assert units["kernel_forward"] == units["kernel_backward"] == "ms"
    split = [r for r in records if r["devices"] == 2]
    assert len(split) == (n_cores > 1) and all(r["case"] == "block_products" for r in split)
    assert (tmp_path / "par.png").exists()
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == len(records) + 1  # The header, then one row a record.


def test_cpu_parallelism_refuses_zero_repeats():
    proc = run_script("cpu_parallelism.py", ["--repeats=0"], timeout=120)
    assert proc.returncode == 2 and "--repeats must be at least 1, got 0" in proc.stderr
