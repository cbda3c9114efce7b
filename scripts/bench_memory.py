"""XLA memory of one whole train step (forward, backward, optimizer update) of ReformerLM.

Nothing is run: each step is compiled (`jax.jit(...).lower(...).compile()`) and its
`memory_analysis()` read, which is exact and repeatable. Three sweeps:

- depth: 2, 4, 8, 12, 24 layers of the pattern (local, lsh), reversible and not, with a
  mid-sized model at length 4096 (`depth`) and with the enwik8 model's widths at 65536
  tokens (`depth_enwik8`: d_model 1024, d_ff 4096, 8 heads of 128, batch 1);
- length: LSH against full attention (reversible, 2 layers) over sequence lengths;
- enwik8: the authors' enwik8 model (`configs/enwik8.py`) at 65536 tokens, batch 1.

    python scripts/bench_memory.py --out docs/benchmarks/memory_cpu.json

writes one JSON record per point, {"sweep", "reversible", "n_layers", "seq_len",
"attention", "temp_bytes", "total_bytes", "device"} (total = arguments + outputs + temp -
aliased), a PNG next to it, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reformer.config import default_config
from reformer.experiments.memory import device_name, enwik8_config, step_memory


def small_model_config(n_layers: int, seq_len: int, attention_types, reversible: bool):
    """A mid-sized model for the sweeps (d_model 256, 4 heads of 64, d_ff 1024)."""
    c = default_config()
    m = c.model
    m.vocab_size, m.d_model, m.d_ff, m.n_heads, m.d_head = 258, 256, 1024, 4, 64
    m.n_layers, m.attention_types = n_layers, tuple(attention_types)
    m.residual = "reversible" if reversible else "two_stream"
    m.lsh_chunk_len, m.local_chunk_len, m.n_hashes = 128, 128, 2
    m.position_chunk_size, m.positional, m.max_len = 1024, "none", seq_len
    c.data.name, c.data.seq_len = "enwik8", seq_len
    c.train.batch_size = 1
    return c


def enwik8_depth_config(n_layers: int, reversible: bool):
    """The enwik8 model's widths and 64K tokens, `n_layers` of the pattern (local, lsh)."""
    config = enwik8_config()
    config.model.n_layers = n_layers
    config.model.residual = "reversible" if reversible else "two_stream"
    config.model.attention_types = ("local", "lsh")
    config.train.batch_size = 1
    return config


def run(depths, lengths, depth_seq_len, with_enwik8, enwik8_depths=()) -> list[dict]:
    records, device = [], device_name()

    def add(sweep, config):
        m = config.model
        record = {
            "sweep": sweep,
            "reversible": m.residual == "reversible",
            "n_layers": m.n_layers,
            "seq_len": config.data.seq_len,
            "attention": "+".join(m.attention_types),
            **step_memory(config),
            "device": device,
        }
        records.append(record)
        print(json.dumps(record), flush=True)

    for reversible in (True, False):
        for n in depths:
            add("depth", small_model_config(n, depth_seq_len, ("local", "lsh"), reversible))
    for reversible in (True, False):
        for n in enwik8_depths:
            add("depth_enwik8", enwik8_depth_config(n, reversible))
    for attention in ("lsh", "full"):
        for length in lengths:
            add("length", small_model_config(2, length, (attention,), True))
    if with_enwik8:
        config = enwik8_config()
        config.train.batch_size = 1  # One 64K sequence per device, as in the paper.
        add("enwik8", config)
    return records


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gib = 2.0**30
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, sweep, title in (
        (ax1, "depth", "Depth: d_model 256, length {}"),
        (ax3, "depth_enwik8", "Depth: enwik8 widths, length {}"),
    ):
        for reversible, style in ((True, "o-"), (False, "s--")):
            pts = [r for r in records if r["sweep"] == sweep and r["reversible"] == reversible]
            ax.plot(
                [r["n_layers"] for r in pts],
                [r["temp_bytes"] / gib for r in pts],
                style,
                label="reversible" if reversible else "not reversible",
            )
        length = next((r["seq_len"] for r in records if r["sweep"] == sweep), 0)
        ax.set(
            xlabel="local+LSH layers",
            ylabel="XLA temp memory of a train step (GiB)",
            title=title.format(length),
        )
        ax.legend()
        ax.grid(alpha=0.3)
    for attention, style in (("lsh", "o-"), ("full", "s--")):
        pts = [r for r in records if r["sweep"] == "length" and r["attention"] == attention]
        ax2.loglog(
            [r["seq_len"] for r in pts],
            [r["temp_bytes"] / gib for r in pts],
            style,
            base=2,
            label="LSH (2 hashes)" if attention == "lsh" else "full attention",
        )
    ax2.set(
        xlabel="sequence length",
        ylabel="XLA temp memory (GiB)",
        title="Length (2 reversible layers, batch 1)",
    )
    ax2.legend()
    ax2.grid(alpha=0.3, which="both")
    fig.suptitle(f"ReformerLM train-step memory ({records[0]['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(records: list[dict]) -> str:
    rows = [
        "| sweep | attention | reversible | layers | length | temp (MiB) | total (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        rows.append(
            f"| {r['sweep']} | {r['attention']} | {r['reversible']} | "
            f"{r['n_layers']} | {r['seq_len']} | {r['temp_bytes'] / 2**20:,.1f} | "
            f"{r['total_bytes'] / 2**20:,.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="2,4,8,12,24")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--depth-seq-len", type=int, default=4096)
    parser.add_argument(
        "--enwik8-depths", default="2,4,8,12,24", help="depths at the enwik8 widths, 64K tokens"
    )
    parser.add_argument(
        "--no-enwik8", action="store_true", help="skip compiling the enwik8 model at 65536 tokens"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (PNG beside it)")
    args = parser.parse_args()
    ints = lambda s: [int(t) for t in s.split(",") if t]  # noqa: E731
    records = run(
        ints(args.depths),
        ints(args.lengths),
        args.depth_seq_len,
        not args.no_enwik8,
        ints(args.enwik8_depths),
    )
    print(markdown(records))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1) + "\n")
        plot(records, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
