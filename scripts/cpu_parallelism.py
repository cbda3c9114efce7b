"""How XLA:CPU spreads the train step's kinds of work over this machine's cores.

The script runs the cases in a process pinned to one core and in one on all of them
(`os.sched_setaffinity` before JAX starts), `--rounds` times in alternating order, and
reports the median over the rounds of each worker's median of `--repeats` timed runs:

- `large_product`: one `[n, n] x [n, n]` float32 product (the projections' and
  feed-forward's kind of work), GFLOP/s.
- `block_products`: the LSH kernel's products, `[G, 64, 64] x [G, 64, 64] -> [G, 64, 64]`
  batched over G = 8 heads x 16 chunks (one block of `reformer/attention/chunked.py`), GFLOP/s.
- `kernel_forward`, `kernel_backward`: the LSH kernel of one layer at the peers benchmark's
  shapes (`reformer.experiments.timing.kernel_seconds`, as `scripts/profile_step.py` times
  it), milliseconds.
- `independent_loops`: two independent scans of block products in one jitted function,
  against one scan: the time ratio (1 = the two ran at once, 2 = one after the other).
- `block_products` over two CPU devices (`--xla_force_host_platform_device_count=2`, the
  batch split between them with `shard_map`), GFLOP/s: the same work as two programs.

    python scripts/cpu_parallelism.py --out docs/benchmarks/cpu_parallelism_cpu.json

writes the records as JSON, a PNG beside it (each case's speed-up from one core to all),
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from reformer.experiments.timing import kernel_seconds, median_seconds

SIZES = {  # case settings: large product n, block count G, kernel length L
    "full": {"n": 2048, "blocks": 128, "seq_len": 4096},
    "small": {"n": 256, "blocks": 8, "seq_len": 256},
}
CASES = ("large_product", "block_products", "independent_loops", "kernel_forward")


def block_operands(blocks: int):
    import jax

    shape = (blocks, 64, 64)
    return jax.random.normal(jax.random.key(0), shape), jax.random.normal(jax.random.key(1), shape)


def block_product(x, y):
    import jax.numpy as jnp

    return jnp.einsum("bqd,bkd->bqk", x, y)


def worker(cases: list[str], size: dict, repeats: int, devices: int) -> list[dict]:
    """Runs `cases` one after the other in this process (already pinned); their records."""
    return [{"case": case, **r} for case in cases for r in run_case(case, size, repeats, devices)]


def run_case(case: str, size: dict, repeats: int, devices: int) -> list[dict]:
    """One case's records: `{"value", "unit"}` (and `"case"` where it gives two)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    if case == "large_product":
        n = size["n"]
        a = jax.random.normal(jax.random.key(0), (n, n))
        s = median_seconds(jax.jit(jnp.matmul), a, a, repeats=repeats)
        return [{"value": 2 * n**3 / s / 1e9, "unit": "GFLOP/s"}]
    x, y = block_operands(size["blocks"])
    flops = 2 * size["blocks"] * 64**3
    if case == "block_products":
        fn = jax.jit(block_product)
        if devices > 1:
            from jax.sharding import NamedSharding
            from jax.sharding import PartitionSpec as P

            mesh = jax.make_mesh((devices,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
            fn = jax.jit(jax.shard_map(block_product, mesh=mesh, in_specs=P("d"), out_specs=P("d")))
            x, y = (jax.device_put(a, NamedSharding(mesh, P("d"))) for a in (x, y))
        seconds = median_seconds(fn, x, y, repeats=repeats)
        return [{"value": flops / seconds / 1e9, "unit": "GFLOP/s"}]
    if case == "independent_loops":

        def loop(x, y):  # 20 dependent block products.
            body = lambda c, _: (jnp.tanh(block_product(c, y)), None)  # noqa: E731
            return lax.scan(body, x, None, length=20)[0]

        one = median_seconds(jax.jit(loop), x, y, repeats=repeats)
        two = median_seconds(jax.jit(lambda x, y: (loop(x, y), loop(y, x))), x, y, repeats=repeats)
        return [{"value": two / one, "unit": "time of two loops / one"}]
    if case == "kernel_forward":  # Both parts of the kernel from one build.
        import types

        args = types.SimpleNamespace(batch=1, n_heads=8, d_head=64, chunk=64, n_hashes=4)
        fwd, bwd = kernel_seconds(args, size["seq_len"], repeats)
        return [
            {"value": 1e3 * fwd, "unit": "ms", "case": "kernel_forward"},
            {"value": 1e3 * bwd, "unit": "ms", "case": "kernel_backward"},
        ]
    raise ValueError(f"unknown case {case!r}; allowed: {', '.join(CASES)}")


def run_worker(cases: tuple[str, ...], cores: int, devices: int, a) -> list[dict]:
    env = dict(os.environ)
    if devices > 1:
        flag = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", ",".join(cases)]
    cmd += ["--cores", str(cores)]
    cmd += ["--size", a.size, "--repeats", str(a.repeats), "--devices", str(devices)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    if proc.returncode:
        why = proc.stderr[-3000:]
        raise RuntimeError(f"worker {','.join(cases)} (cores {cores}) failed:\n{why}")
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    return [{**r, "cores": cores, "devices": devices} for r in records]


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = {(r["case"], r["devices"]): r for r in records if r["cores"] == 1}
    bars = []
    for r in records:
        base = one.get((r["case"], 1))
        if r["cores"] == 1 or base is None or r["case"] == "independent_loops":
            continue
        faster = base["value"] / r["value"] if r["unit"] == "ms" else r["value"] / base["value"]
        label = r["case"] + (f"\n({r['devices']} devices)" if r["devices"] > 1 else "")
        bars.append((label, faster))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color="tab:blue")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(records[0]["n_cores"], color="gray", lw=0.8, ls="--")
    ax.set_ylabel(f"speed-up: all {records[0]['n_cores']} cores vs one")
    ax.set_title("XLA:CPU: what the second core gives each kind of work")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="docs/benchmarks/cpu_parallelism_cpu.json")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per worker")
    p.add_argument("--rounds", type=int, default=3, help="one worker per core count a round")
    p.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # Cases, comma-separated.
    p.add_argument("--cores", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    for name in ("repeats", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(a, name)}")
    if a.worker:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: a.cores]))
        print(json.dumps(worker(a.worker.split(","), SIZES[a.size], a.repeats, a.devices)))
        return
    n_cores = len(os.sched_getaffinity(0))
    import jax

    common = {"n_cores": n_cores, "size": a.size, "cpu": platform.processor() or platform.machine()}
    common["jax"] = jax.__version__
    runs = []  # Rounds in alternating order, so drifting load from other processes evens out.
    for round_ in range(a.rounds):
        for cores in sorted({1, n_cores}, reverse=bool(round_ % 2)):
            runs += run_worker(CASES, cores, 1, a)
        if n_cores > 1:
            runs += run_worker(("block_products",), n_cores, 2, a)
    by_key = {}  # One record per (case, cores, devices): the median over the rounds.
    for r in runs:
        by_key.setdefault((r["case"], r["cores"], r["devices"]), []).append(r)
    records = []
    for same in by_key.values():
        values = [r["value"] for r in same]
        records.append({**same[0], "value": statistics.median(values), "values": values, **common})
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(records, f, indent=1)
    plot(records, os.path.splitext(a.out)[0] + ".png")
    print("| case | cores | devices | value |\n|---|---|---|---|")
    for r in records:
        print(f"| {r['case']} | {r['cores']} | {r['devices']} | {r['value']:.3g} {r['unit']} |")


if __name__ == "__main__":
    main()
