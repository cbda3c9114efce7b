"""XLA memory of the enwik8 model's train step from 64K to 1M tokens, float32 and bfloat16.

Nothing is run: each step is compiled and its `memory_analysis()` read (as
`scripts/bench_memory.py` does), so 1M tokens can be measured on a CPU machine. The model is
`configs/enwik8.py` (12 layers `[local, local, lsh, local] x 3`, d_model 1024, batch 1) with
its axial grid widened to `(L / 512, 512)` and two LSH buckets per chunk (512 at 64K, as the
config has, 8,192 at 1M).

    python scripts/bench_long_context.py --out docs/benchmarks/long_context_cpu.json

writes one record per point ({"seq_len", "dtype", "temp_bytes", "total_bytes",
"temp_bytes_per_token", "n_params", "compile_s", "device"}), a PNG beside it, and prints a
Markdown table. `--set model.dropout=0` (repeatable) changes a config field at every point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_memory import device_name, enwik8_config, step_memory  # noqa: E402

LENGTHS = (65_536, 131_072, 262_144, 524_288, 1_048_576)
DTYPES = ("float32", "bfloat16")


def long_config(seq_len: int, dtype: str, overrides=()):
    c = enwik8_config()
    for item in overrides:  # "model.dropout=0": config.model.dropout = 0.0
        field, value = item.split("=", 1)
        group, name = field.split(".")
        c[group][name] = type(c[group][name])(value)
    m = c.model
    c.train.batch_size, c.data.seq_len, m.max_len, m.dtype = 1, seq_len, seq_len, dtype
    m.axial_shape = (seq_len // 512, 512)
    m.n_buckets = 2 * seq_len // m.lsh_chunk_len
    return c


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for dtype in DTYPES:
        rs = [r for r in records if r["dtype"] == dtype]
        ax.plot([r["seq_len"] for r in rs], [r["total_bytes"] / 2**30 for r in rs], "o-",
                label=f"{dtype}, total")  # fmt: skip
    ax.axhline(75, color="gray", ls="--", lw=1, label="75 GiB (target at 1M, bfloat16)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("tokens per sequence (batch 1)")
    ax.set_ylabel("XLA memory of one train step (GiB)")
    ax.set_title(f"configs/enwik8.py train step ({records[0]['device']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--out", default="docs/benchmarks/long_context_cpu.json")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override, e.g. model.dropout=0"
    )
    args = parser.parse_args()
    records = []
    for dtype in args.dtypes.split(","):
        for seq_len in map(int, args.lengths.split(",")):
            config = long_config(seq_len, dtype, args.set)
            r = {"seq_len": seq_len, "dtype": dtype, **step_memory(config)}
            r["overrides"] = args.set
            r["temp_bytes_per_token"] = r["temp_bytes"] / seq_len
            r["device"] = device_name()
            records.append(r)
            print(json.dumps(r), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    plot(records, out.with_suffix(".png"))
    print("| tokens | dtype | temp GiB | total GiB | temp KiB per token |")
    print("|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['seq_len']:,} | {r['dtype']} | {r['temp_bytes'] / 2**30:.2f} | "
            f"{r['total_bytes'] / 2**30:.2f} | {r['temp_bytes_per_token'] / 1024:.0f} |"
        )


if __name__ == "__main__":
    main()
