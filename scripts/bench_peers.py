"""One Reformer train step in this project against other Reformer implementations.

The same model (causal byte-level LM, every layer LSH attention, fp32, vocabulary 258,
axial positions, no dropout) is built in each implementation and one whole optimizer step
(forward, loss, backward, Adam update) is timed:

- `ours`: this project's train step as `reformer/training/loop.py` runs it (`steps.jit_train_step`,
  compiled ahead of time by `steps.compile_train_step`: state donated, batch sharded over
  the mesh, the compiler's freed heap returned to the OS); reversible layers. `ours_plain` is the
  same with `model.residual = "two_stream"` (only when asked for).
- `hf`: `transformers.ReformerModelWithLMHead` (reversible in training), `torch.optim.Adam`.
- `lucidrains`: `reformer_pytorch.ReformerLM` (reversible at every length with
  `reverse_thres=0`), `torch.optim.Adam`.
- `trax`: `trax.models.ReformerLM` with `LSHSelfAttention`, stepped with
  `jax.jit(jax.value_and_grad(loss))` and Adam; plain autodiff, so *not* reversible. Trax
  needs its own virtual environment (it pulls TensorFlow): give its interpreter with
  `--trax_python`; without it trax is skipped.

Every implementation runs in its own process (this script with `--worker IMPL`), which
builds the model (each implementation's builder is a module of `reformer/experiments/peers/`),
runs `--warmup` untimed steps (compilation for JAX) and then answers a line protocol on
stdin/stdout: `step` runs one train step and answers `{"seconds": s}`; `quit` answers
`{"peak_rss_bytes": n}` (the process's peak resident memory) and exits. The parent starts
the workers of one sequence length, takes `--repeats` timed steps from each in turn (so load
from other processes spreads evenly), then moves to the next length.

    python scripts/bench_peers.py --out docs/benchmarks/peers_cpu.json

writes one JSON record per implementation and length ({"impl", "reversible", "seq_len",
"step_seconds" (median), "step_seconds_all", "peak_rss_bytes", "device", the settings, the
library versions, "cpu", "threads", ...}), a PNG beside it, and prints a Markdown table of
our ratios against each peer.

On a GPU (`--device gpu`: JAX's CUDA backend and PyTorch's) the step runs there, and every
record also holds `peak_device_bytes`, the process's peak of allocated GPU memory (PyTorch's
`torch.cuda.max_memory_allocated`, JAX's `peak_bytes_in_use`), which the table and plot then
compare instead of the host's RSS. Float32 products run at one precision in every library,
`--matmul_precision`: `tf32` (the GPU default of JAX; PyTorch is set to match) or `highest`.
The workers of one length share the GPU, so JAX's preallocation is turned off.

    python scripts/bench_peers.py --device gpu --out docs/benchmarks/peers_h200.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from reformer.experiments.peers.common import (
    IMPLS,
    JAX_PLATFORMS,
    SETTINGS,
    VOCAB,
    cpu_model,
    versions,
)
from reformer.experiments.peers.parent import run_length, trax_available
from reformer.experiments.peers.report import plot, ratio_table
from reformer.experiments.peers.worker import worker_main


def parent_main(args) -> int:
    impls = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        sys.exit(f"unknown --impls {unknown}; choose from {IMPLS}")
    if "trax" in impls:
        ok, why = trax_available(args.trax_python, args.device)
        if not ok:
            print(f"skipping trax: {why}", flush=True)
            impls.remove("trax")
    lengths = [int(t) for t in args.seq_lens.split(",") if t]
    for n in lengths:
        if n % (2 * args.chunk):
            sys.exit(f"--seq_lens: {n} is not a multiple of 2 * --chunk = {2 * args.chunk}")
    common = {
        **{name: getattr(args, name) for name in SETTINGS},
        "vocab_size": VOCAB,
        "dtype": "float32",
        "matmul_precision": args.matmul_precision if args.device == "gpu" else "highest",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
    }
    records: list[dict] = []
    out = Path(args.out) if args.out else None
    for seq_len in lengths:
        records += run_length(args, impls, seq_len, common, __file__)
        if out is not None:  # Written after every length, so a long run keeps what it has.
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(records, indent=1) + "\n")
    print(ratio_table(records))
    if out is not None and records:
        plot(records, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 1 if any(r.get("error") for r in records) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_layers", type=int, default=6)
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--d_ff", type=int, default=2048)
    parser.add_argument("--n_heads", type=int, default=8)
    parser.add_argument("--d_head", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64, help="LSH chunk length")
    parser.add_argument("--n_hashes", type=int, default=4)
    parser.add_argument("--seq_lens", default="4096,16384")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--impls", default="ours,hf,lucidrains,trax", help=f"of {IMPLS}")
    parser.add_argument("--trax_python", default=None, help="a Python that can import trax")
    parser.add_argument(
        "--ours_ff_chunk", type=int, default=0, help="model.position_chunk_size of ours (0 = whole)"
    )
    parser.add_argument(
        "--device",
        choices=tuple(JAX_PLATFORMS),
        default="cpu",
        help="where every implementation runs (gpu: JAX's CUDA backend and PyTorch's)",
    )
    parser.add_argument(
        "--matmul_precision",
        choices=("tf32", "highest"),
        default="tf32",
        help="float32 products on the GPU, in every library (on a CPU: full float32)",
    )
    parser.add_argument("--out", default=None, help="JSON file (PNG beside it)")
    parser.add_argument(
        "--start_timeout", type=float, default=3600, help="seconds for build + warm-up"
    )
    parser.add_argument(
        "--min_step_timeout",
        type=float,
        default=300,
        help="least seconds a timed step may take before its worker is killed",
    )
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds between timed steps of workers"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seq_len", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    sys.exit(parent_main(args))


if __name__ == "__main__":
    main()
