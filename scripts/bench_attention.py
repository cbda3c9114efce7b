"""Speed and memory of one attention layer against sequence length (paper, Figure 5 right).

Forward + backward of one self-attention layer (batch 1, 8 heads, d_head 64, causal) for full
attention and for LSH attention with 1, 2, 4 and 8 hashes (chunk 128, automatic buckets).
Times are medians of timed runs after a warm-up run, taken round-robin over all points (so
load from other processes spreads evenly); memory is XLA's temporary buffer size of the
compiled step (`memory_analysis().temp_size_in_bytes`), exact and repeatable. Full attention
is compiled at every length but only run where it fits in memory.

    python scripts/bench_attention.py --out docs/benchmarks/attention_cpu.json

writes one JSON record per point, {"impl", "n_hashes", "seq_len", "time_ms", "temp_bytes",
"device"} (time_ms is null where a point was not run; temp_bytes is null where XLA ran out
of memory compiling it), a PNG next to it, and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from reformer.attention.self_attention import FullSelfAttention, LSHSelfAttention

N_HEADS, D_HEAD, CHUNK_LEN = 8, 64, 128


def _parse_ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _available_bytes() -> int:
    """Memory the step may use: the accelerator's limit, or free host RAM."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _step(module, seq_len: int):
    """Compiled forward + backward (gradients for parameters and input) and its arguments."""
    d_model = N_HEADS * D_HEAD
    x = jax.random.normal(jax.random.key(0), (1, seq_len, d_model))
    cotangent = jax.random.normal(jax.random.key(1), x.shape)
    params = module.init(jax.random.key(2), x[:, :CHUNK_LEN])

    def loss(params, x, hash_rng):
        y, _ = module.apply(params, x, rngs={"hash": hash_rng})
        return jnp.sum(y * cotangent)

    args = (params, x, jax.random.key(3))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    return compiled, args


def _module(impl: str, n_hashes: int | None):
    if impl == "full":
        return FullSelfAttention(N_HEADS, D_HEAD, causal=True)
    return LSHSelfAttention(N_HEADS, D_HEAD, chunk_len=CHUNK_LEN, n_hashes=n_hashes)


def _run(compiled, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return 1e3 * (time.perf_counter() - start)


def measure(points: list[tuple[str, int | None, int]], repeats: int, device: str) -> list[dict]:
    """Compiles every point, then times them round-robin: `repeats` rounds, each timing every
    point once, so a burst of load from other processes spreads over all points instead of
    skewing a few. Each point's time is the median of its own timed runs."""
    budget = 0.8 * _available_bytes()
    steps = []
    for impl, n_hashes, seq_len in points:
        try:
            compiled, args = _step(_module(impl, n_hashes), seq_len)
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            # XLA:GPU runs kernels while compiling (autotuning); too big even for that.
            print(f"compiled {impl} {n_hashes} {seq_len}: out of memory", flush=True)
            steps.append(dict(compiled=None, args=None, temp_bytes=None, runnable=False, times=[]))
            continue
        temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
        runnable = temp_bytes < budget
        if runnable:
            _run(compiled, args)  # warm-up
        steps.append(
            dict(compiled=compiled, args=args, temp_bytes=temp_bytes, runnable=runnable, times=[])
        )
        print(
            f"compiled {impl} {n_hashes} {seq_len}: temp {temp_bytes / 2**20:,.0f} MiB", flush=True
        )
    for round_ in range(repeats):
        for step in steps:
            if step["runnable"]:
                # An untimed run first: the first run after another point pays for releasing
                # that point's buffers (up to GiBs for full attention), which is not its cost.
                _run(step["compiled"], step["args"])
                step["times"].append(_run(step["compiled"], step["args"]))
        print(f"timed round {round_ + 1}/{repeats}", flush=True)
    return [
        dict(
            impl=impl,
            n_hashes=n_hashes,
            seq_len=seq_len,
            time_ms=statistics.median(step["times"]) if step["times"] else None,
            temp_bytes=step["temp_bytes"],
            device=device,
        )
        for (impl, n_hashes, seq_len), step in zip(points, steps, strict=True)
    ]


def _label(record: dict) -> str:
    if record["impl"] == "full":
        return "full"
    n = record["n_hashes"]
    return f"LSH, {n} hash" + ("" if n == 1 else "es")


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.4))
    for label in dict.fromkeys(_label(r) for r in records):
        points = [r for r in records if _label(r) == label]
        style = dict(marker="o", linestyle="--" if label == "full" else "-", label=label)
        timed = [r for r in points if r["time_ms"] is not None]
        ax_time.plot(
            [r["seq_len"] for r in timed],
            [1e3 * r["time_ms"] / r["seq_len"] for r in timed],
            **style,
        )
        points = [r for r in points if r["temp_bytes"] is not None]  # Not compiled: no data.
        (line,) = ax_mem.plot(
            [r["seq_len"] for r in points], [r["temp_bytes"] / 2**20 for r in points], **style
        )
        not_run = [r for r in points if r["time_ms"] is None]
        if not_run:  # compiled for its memory, too big to run
            ax_mem.plot(
                [r["seq_len"] for r in not_run],
                [r["temp_bytes"] / 2**20 for r in not_run],
                marker="o",
                markersize=11,
                linestyle="",
                markerfacecolor="none",
                color=line.get_color(),
                label=f"{label} (compiled, not run)",
            )
    ax_time.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length",
        ylabel="µs per token (forward + backward)",
        title=f"Time per token ({records[0]['device']})",
    )
    ax_mem.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length",
        ylabel="XLA temporary memory (MiB)",
        title="Temporary memory of the compiled step",
    )
    lengths = sorted({r["seq_len"] for r in records})
    for ax in (ax_time, ax_mem):
        ax.xaxis.set_major_locator(FixedLocator(lengths))
        ax.set_xticklabels([f"{n // 1024}K" for n in lengths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    ax_time.yaxis.set_minor_locator(NullLocator())
    low, high = ax_time.get_ylim()
    candidates = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4)
    ticks = [t for t in candidates if low <= t <= high]
    ax_time.yaxis.set_major_locator(FixedLocator(ticks))
    ax_time.set_yticklabels([f"{t:g}" for t in ticks])
    fig.suptitle("One causal self-attention layer: batch 1, 8 heads, d_head 64, LSH chunk 128")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_table(records: list[dict]) -> str:
    lengths = sorted({r["seq_len"] for r in records})
    labels = list(dict.fromkeys(_label(r) for r in records))
    by_key = {(_label(r), r["seq_len"]): r for r in records}

    def cell(label, n, field):
        r = by_key.get((label, n))
        if r is None:
            return ""
        if r["temp_bytes"] is None:
            return "out of memory"
        if field == "time":
            return "not run" if r["time_ms"] is None else f"{1e3 * r['time_ms'] / n:.1f}"
        return f"{r['temp_bytes'] / 2**20:,.0f}"

    header = "| | " + " | ".join(f"{n:,}" for n in lengths) + " |"
    rule = "|---" * (len(lengths) + 1) + "|"
    rows = [
        f"| {lab}: µs/token | " + " | ".join(cell(lab, n, "time") for n in lengths) + " |"
        for lab in labels
    ]
    rows += [
        f"| {lab}: temp MiB | " + " | ".join(cell(lab, n, "mem") for n in lengths) + " |"
        for lab in labels
    ]
    return "\n".join([header, rule, *rows])


def targets(records: list[dict]) -> str:
    """The paper-like targets: flat LSH time per token, linear full attention, LSH memory."""
    per_token = {
        (_label(r), r["seq_len"]): r["time_ms"] / r["seq_len"] for r in records if r["time_ms"]
    }
    temp = {(_label(r), r["seq_len"]): r["temp_bytes"] for r in records if r["temp_bytes"]}
    lengths = sorted({r["seq_len"] for r in records})
    lines = []
    for label in dict.fromkeys(_label(r) for r in records):
        timed = [n for n in lengths if (label, n) in per_token]
        if len(timed) > 1:
            ratio = per_token[label, timed[-1]] / per_token[label, timed[0]]
            lines.append(
                f"- {label}: time per token at {timed[-1]:,} / at {timed[0]:,} = {ratio:.2f}x"
            )
    both = [n for n in lengths if ("full", n) in temp and ("LSH, 4 hashes", n) in temp]
    if both:
        n = both[-1]
        share = temp["LSH, 4 hashes", n] / temp["full", n]
        lines.append(f"- LSH (4 hashes) temp memory at {n:,}: {100 * share:.2f}% of full")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_lengths = (
        "1024,2048,4096,8192,16384"
        if jax.default_backend() == "cpu"
        else ("1024,2048,4096,8192,16384,32768,65536")
    )
    parser.add_argument("--lengths", default=default_lengths, help="comma-separated lengths")
    parser.add_argument("--hashes", default="1,2,4,8", help="comma-separated LSH hash counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (>= 3)")
    parser.add_argument("--no-full", action="store_true", help="skip full attention")
    parser.add_argument("--out", type=Path, help="JSON output; the PNG goes next to it")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")

    device = jax.devices()[0].device_kind
    configs = [] if args.no_full else [("full", None)]
    configs += [("lsh", n) for n in _parse_ints(args.hashes)]
    points = [(impl, n, length) for impl, n in configs for length in _parse_ints(args.lengths)]
    records = measure(points, args.repeats, device)
    for record in records:
        print(json.dumps(record))
    print(markdown_table(records))
    print(targets(records))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1) + "\n")
        plot(records, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
