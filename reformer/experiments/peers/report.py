"""The peers benchmark's report: a Markdown table of each implementation's step and memory
against ours, and a PNG of both per length."""

from __future__ import annotations

from pathlib import Path

from reformer.experiments.peers.common import IMPLS

COLORS = {
    "ours": "tab:blue",
    "ours_plain": "tab:cyan",
    "hf": "tab:orange",
    "lucidrains": "tab:green",
    "trax": "tab:red",
}


def memory_key(records: list[dict]) -> tuple[str, str]:
    """The memory the records compare, and its name: GPU memory where there is any."""
    if any(r.get("peak_device_bytes") for r in records):
        return "peak_device_bytes", "peak GPU memory"
    return "peak_rss_bytes", "peak RSS"


def ratio_table(records: list[dict]) -> str:
    """Markdown: each implementation's median step and peak memory per length, and ours
    against it (peer step / our step: >1 means we are faster; our memory / peer memory: <1
    means we use less). Memory is the host's peak RSS on a CPU, peak GPU memory on a GPU."""
    gib = 2.0**30
    key, name = memory_key(records)
    rows = [
        f"| length | impl | reversible | step (s) | {name} (GiB) | "
        "peer step / our step | our memory / peer memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for seq_len in sorted({r["seq_len"] for r in records}):
        at = [r for r in records if r["seq_len"] == seq_len]
        ours = next((r for r in at if r["impl"] == "ours" and r["step_seconds"]), None)
        for r in at:
            if r.get("error"):
                rows.append(f"| {seq_len} | {r['impl']} | - | error | - | - | - |")
                continue
            step_ratio = rss_ratio = "-"
            if ours is not None and r is not ours:
                step_ratio = f"{r['step_seconds'] / ours['step_seconds']:.2f}x"
                if ours.get(key) and r.get(key):
                    rss_ratio = f"{ours[key] / r[key]:.2f}"
            rss = f"{r[key] / gib:.2f}" if r.get(key) else "-"
            rows.append(
                f"| {seq_len} | {r['impl']} | {r['reversible']} | {r['step_seconds']:.3g} | "
                f"{rss} | {step_ratio} | {rss_ratio} |"
            )
    return "\n".join(rows)


def _bars(ax, ok: list[dict], impls: list[str], lengths: list[int], key: str, scale: float):
    """One bar per implementation and length of `key / scale`, labelled with its value."""
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        xs, ys = [], []
        for i, seq_len in enumerate(lengths):
            r = next((r for r in ok if r["impl"] == impl and r["seq_len"] == seq_len), None)
            if r is not None and r.get(key):
                xs.append(i + (k - (len(impls) - 1) / 2) * width)
                ys.append(r[key] / scale)
        rev = next((r["reversible"] for r in ok if r["impl"] == impl), None)
        label = f"{impl} ({'reversible' if rev else 'not reversible'})"
        bars = ax.bar(xs, ys, width, label=label, color=COLORS.get(impl))
        ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)


def _title(r0: dict) -> str:
    return (
        f"Reformer LM train step, {r0['n_layers']} LSH layers, d_model {r0['d_model']}, "
        f"d_ff {r0['d_ff']}, {r0['n_heads']}x{r0['d_head']} heads, chunk {r0['chunk']}, "
        f"{r0['n_hashes']} hashes, batch {r0['batch']}, fp32\n"
        + (
            f"{r0['cpu']}, {r0['cpu_count']} cores"
            if r0["device"] == "cpu"
            else f"{r0['device']} ({r0.get('matmul_precision')} products)"
        )
    )


def plot(records: list[dict], path: Path) -> None:
    """Step time and peak memory of every implementation, side by side per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if not r.get("error") and r["step_seconds"]]
    lengths = sorted({r["seq_len"] for r in records})
    impls = [i for i in IMPLS if any(r["impl"] == i for r in ok)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    mem_key, mem_name = memory_key(ok)
    for ax, key, scale, ylabel in (
        (axes[0], "step_seconds", 1.0, "train step (s, median)"),
        (axes[1], mem_key, 2.0**30, f"{mem_name} of the process (GiB)"),
    ):
        _bars(ax, ok, impls, lengths, key, scale)
        ax.set_xticks(range(len(lengths)), [f"L = {n:,}" for n in lengths])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    axes[0].set_title("Time of one train step (forward, backward, Adam)")
    axes[1].set_title(f"{mem_name[0].upper()}{mem_name[1:]}")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(_title(records[0]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
