"""Where the time of one train step goes, by XLA operation.

Builds the train step of `scripts/bench_peers.py`'s model exactly as that benchmark runs it
(`reformer.experiments.peers.ours.build_ours`: 6 LSH layers, d_model 512, d_ff 2048, 8 heads
of 64, chunk 64, 4 hashes, batch 1), traces one step with `jax.profiler` and sums the time of
each XLA operation, then groups them: products with weights (run once per layer), the LSH
kernel's blocked products (run once per block), gathers and scatters of rows, sorts, and the
rest. Operations overlap on several cores, so the shares are of the summed operation time,
not of the wall time.

Then it times the LSH attention kernel of one layer on its own, at the step's shapes (all
heads, without the projections): the forward pass's part (hashing, sorting, attention) and
the backward pass's (attention recomputed with the saved buckets, as the reversible stack
does, then its gradients; `reformer.experiments.timing.kernel_seconds`), and compares
`n_layers` times their sum with the step's wall time.

    python scripts/profile_step.py --seq_len 4096
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import types

from reformer.experiments.peers.ours import build_ours
from reformer.experiments.timing import kernel_seconds, median_seconds


def category(name: str, calls: int, n_layers: int) -> str:
    base = re.sub(r"\.\d+$", "", name)
    if base.startswith(("ynn_fusion", "dot")):  # XLA:CPU runs products as YNN fusions.
        return "products with weights" if calls <= 2 * n_layers else "LSH block products"
    for kind in ("gather", "scatter", "concatenate", "sort", "exponential"):
        if kind in base:
            return {"concatenate": "gather"}.get(kind, kind)
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--top", type=int, default=15, help="operations listed by time")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the step and kernel")
    a = p.parse_args()
    args = types.SimpleNamespace(
        d_model=512, d_ff=2048, n_heads=8, d_head=64, n_layers=6, chunk=64, n_hashes=4,
        batch=1, ours_ff_chunk=0, device="cpu", matmul_precision="highest",
    )  # fmt: skip
    import jax

    step, _ = build_ours(args, a.seq_len, reversible=True)
    step_s = median_seconds(step, repeats=a.repeats)
    print(f"step: {step_s:.2f} s at {a.seq_len} tokens (median of {a.repeats})")
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            step()
        (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith("$") or "Thunk" in name or "Slinky" in name:
            continue  # Python frames and the runtime's own spans, not XLA operations.
        total[name] += e.get("dur", 0)
        calls[name] += 1
    groups = collections.Counter()
    for name, us in total.items():
        groups[category(name, calls[name], args.n_layers)] += us
    summed = sum(groups.values())
    print(f"summed operation time: {summed / 1e6:.2f} s")
    for kind, us in groups.most_common():
        print(f"  {kind:24s} {us / 1e6:7.2f} s  {100 * us / summed:5.1f}%")
    print(f"top {a.top} operations (calls):")
    for name, us in total.most_common(a.top):
        print(f"  {name:40s} {us / 1e3:9.1f} ms  ({calls[name]})")
    fwd, bwd = kernel_seconds(args, a.seq_len, a.repeats)
    kernel = args.n_layers * (fwd + bwd)
    print(
        f"LSH kernel of one layer, alone: forward {1e3 * fwd:.1f} ms, backward {1e3 * bwd:.1f} ms"
        f" (recomputation and gradients); x {args.n_layers} layers = {kernel:.2f} s,"
        f" {kernel / step_s:.2f} of the step; the rest of the step: {step_s - kernel:.2f} s"
    )


if __name__ == "__main__":
    main()
