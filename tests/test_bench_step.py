"""scripts/bench_step.py: the FLOP count behind MFU, and a toy sweep end to end."""

import json
import os
import sys
import types

import jax
import numpy as np
import pytest

from tests.conftest import REPO, load_script, run_script

script = load_script("bench_step")

REQUIRED = {
    "seq_len",
    "attention_types",
    "reversible",
    "dtype",
    "step_seconds",
    "tokens_per_sec",
    "mfu",
    "model_flops",
    "peak_flops",
    "device",
    "batch",
    "temp_bytes",
}


def _args(**kw):
    base = dict(scale="small", d_model=64, d_ff=512, n_heads=4, d_head=32, n_layers=1,
                chunk=64, n_hashes=2, tokens=1024)  # fmt: skip
    return types.SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("seq_len,d_ff", [(512, 256), (256, 2048)])
def test_model_flops_agree_with_xla_for_one_plain_layer(seq_len, d_ff):
    """With one layer and no reversible recomputation, the analytic count (3 x forward) is
    what XLA's cost analysis counts for the compiled step (which also counts elementwise
    work, so it may be a few percent higher), for attention- and FF-heavy shapes."""
    from reformer.training import sharding
    from reformer.training.optimizer import make_optimizer
    from reformer.training.state import abstract_state, make_model
    from reformer.training.steps import jit_train_step

    args = _args(d_ff=d_ff)
    c = script.make_config(args, seq_len, ("full",), False, "float32")
    mesh = sharding.make_mesh(c.mesh)
    model, tx = make_model(c), make_optimizer(c.optimizer)
    abstract = abstract_state(c, model, tx, mesh)
    step = jit_train_step(c, model, tx, mesh, jax.tree.map(lambda a: a.sharding, abstract))
    shape = (c.train.batch_size, seq_len)
    batch = {
        "tokens": jax.ShapeDtypeStruct(shape, np.int32),
        "weights": jax.ShapeDtypeStruct(shape, np.float32),
    }
    compiled = step.lower(abstract, batch, jax.eval_shape(lambda: jax.random.key(0))).compile()
    cost = compiled.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = script.model_flops(c, script.matmul_param_count(abstract.params))
    assert 0.9 < xla / ours < 1.1, (xla, ours)


def test_model_flops_scale_with_length_as_the_attention_kind_says():
    args = _args()
    counts = {}
    for kind in ("full", "lsh"):
        for seq_len in (512, 1024):  # Same tokens per step (batch 2 and 1).
            c = script.make_config(args, seq_len, (kind,), True, "float32")
            counts[kind, seq_len] = script.model_flops(c, 10_000)
    # Full attention's keys per query grow with L; LSH's stay 2 chunks x n_hashes (plus the
    # hash projection, which grows with the number of buckets).
    assert counts["full", 1024] > 1.2 * counts["full", 512]
    assert counts["lsh", 1024] < 1.1 * counts["lsh", 512]


@pytest.mark.slow  # About 30 s: the fast suite keeps the script's other tests.
def test_toy_sweep_writes_records_and_plot(tmp_path):
    out = tmp_path / "step.json"
    args = ["--lengths=128,256", "--tokens=256", "--full_max_len=128", "--n_layers=1",
            "--variants=lsh_factorized_reversible,full_plain", "--d_model=32", "--d_ff=64",
            "--n_heads=2", "--d_head=16", "--chunk=16", "--repeats=1", f"--out={out}"]  # fmt: skip
    proc = run_script("bench_step.py", args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["variant"], r["seq_len"], r["batch"]) for r in records] == [
        ("lsh_factorized_reversible", 128, 2),
        ("lsh_factorized_reversible", 256, 1),
        ("full_plain", 128, 2),  # Full attention stops at --full_max_len.
    ]
    # 16 and 32 buckets as 4 x 4 and 4 x 8.
    assert [r["model"].split("buckets as ")[1] for r in records[:2]] == ["(4, 4)", "(4, 8)"]
    for r in records:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["step_seconds"] > 0 and 0 < r["mfu"] < 1
        assert r["tokens_per_sec"] == pytest.approx(256 / r["step_seconds"])
    assert (tmp_path / "step.png").stat().st_size > 10_000
    assert "| 128 | 2 | full_plain | float32 |" in proc.stdout


def test_unknown_variant_is_refused_with_the_allowed_ones():
    proc = run_script("bench_step.py", ["--variants=lsh_fast"], timeout=120)
    assert proc.returncode != 0
    assert "lsh_fast" in proc.stderr and "lsh_reversible" in proc.stderr


@pytest.mark.parametrize("seq_len,n_buckets", [(65536, 512), (1048576, 8192)])
def test_enwik8_scale_keeps_two_buckets_per_chunk(seq_len, n_buckets):
    """At the enwik8 scale the 64K point is configs/enwik8.py's model and the 1M point has
    the buckets of its :1m variant (not the 64K config's 512, which would make each bucket
    16 chunks long)."""
    c = script.make_config(
        _args(scale="enwik8", tokens=seq_len), seq_len, ("lsh",), True, "bfloat16"
    )
    assert c.model.n_buckets == n_buckets and c.model.lsh_chunk_len == 256
    assert np.prod(c.model.axial_shape) == seq_len and c.train.batch_size == 1


def _gpu_benchmarks(*args):
    import subprocess

    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    return subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "gpu_benchmarks.sh"), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_gpu_benchmarks_refuse_a_bad_name_and_a_machine_without_a_gpu():
    """scripts/gpu_benchmarks.sh checks its output name and that JAX sees a GPU before it runs
    anything (so no CPU number lands in a file named for a GPU)."""
    proc = _gpu_benchmarks("H100/x")
    assert proc.returncode == 2 and "NAME must be" in proc.stderr, proc.stderr
    if jax.devices()[0].platform == "gpu":
        pytest.skip("this machine has a GPU")
    proc = _gpu_benchmarks("h100")
    assert proc.returncode == 2 and "JAX sees no GPU" in proc.stderr, proc.stderr
    assert "== step_64k" not in proc.stdout
