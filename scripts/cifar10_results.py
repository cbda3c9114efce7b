"""The image experiment's results table: trained CIFAR-10 workdirs scored on the test split
against the lossless baselines on the same pixels.

    timeout -s TERM 60m python -m reformer.train --config configs/cifar10.py:cpu \\
        --workdir runs/cifar10_cpu
    python -m reformer.evaluate --config configs/cifar10.py:cpu --workdir runs/cifar10_cpu \\
        --config.eval.split=test
    python -m reformer.sample --config configs/cifar10.py:cpu --workdir runs/cifar10_cpu \\
        --out runs/cifar10_cpu/samples.png
    python scripts/cifar10_results.py --run lsh=runs/cifar10_cpu \\
        --pictures runs/cifar10_cpu/samples.png

Each `--run NAME=WORKDIR` must hold `eval_test.json` (`reformer.evaluate` on the test split)
and its `metrics.jsonl`; `--baselines` is `scripts/image_baselines.py`'s JSON for the same
split. Writes `--out` (JSON: one record per model, with `bits_per_dim`, and the baseline
records as they are), a Markdown table (`--markdown`), a PNG of validation bits/dim against
training minutes beside the JSON, and copies `--pictures` (the samples and completions) into
docs/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from reformer.experiments.results import read_metrics, write_results

DEVICE = "cpu (2 cores)"


def train_minutes(records: list[dict]) -> list[tuple[int, float]]:
    """`(step, minutes)` at each logged training step: the time of the training steps only
    (each interval's steps over its steps/s; compilation, evaluations and saves left out)."""
    out, minutes, last = [], 0.0, 0
    for r in records:
        if r.get("split") == "train" and r.get("steps_per_sec"):
            minutes += (r["step"] - last) / r["steps_per_sec"] / 60
            last = r["step"]
            out.append((r["step"], minutes))
    return out


def minutes_at(clock: list[tuple[int, float]], step: int) -> float:
    """Training minutes at `step` (the last logged step at or before it)."""
    done = [m for s, m in clock if s <= step]
    return done[-1] if done else 0.0


def run_record(name: str, workdir: str) -> dict:
    with open(os.path.join(workdir, "eval_test.json")) as f:
        test = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    metrics = read_metrics(workdir)
    clock = train_minutes(metrics)
    curve = [
        (r["step"], minutes_at(clock, r["step"]), r["bits_per_token"])
        for r in metrics
        if r.get("split") == "eval"
    ]
    return {
        "model": name,
        "attention_types": config["model"]["attention_types"],
        "split": test["split"],
        "bits_per_dim": test["bits_per_dim"],
        "images": test["images"],
        "sub_pixels": test["sub_pixels"],
        "step": test["step"],
        "train_minutes": round(minutes_at(clock, test["step"]), 1),
        "n_hashes": test.get("n_hashes"),
        "validation_curve": curve,
        "workdir": workdir,
        "device": DEVICE,
    }


def table(runs: list[dict], baselines: list[dict]) -> str:
    png = next(b["bits_per_dim"] for b in baselines if b["baseline"] == "png_no_header")
    lines = [
        "| model or compressor | step | training minutes | test bits/dim | vs PNG (no header) |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        attention = "/".join(r["attention_types"])
        lines.append(
            f"| {r['model']} ({attention} attention) | {r['step']} | {r['train_minutes']:.1f} "
            f"| {r['bits_per_dim']:.3f} | {r['bits_per_dim'] - png:+.3f} |"
        )
    for b in baselines:
        lines.append(
            f"| {b['baseline']} | | | {b['bits_per_dim']:.3f} | {b['bits_per_dim'] - png:+.3f} |"
        )
    images = {r["images"] for r in runs} | {b["images"] for b in baselines}
    lines.append("")
    lines.append(
        f"Test split: {', '.join(f'{n:,}' for n in sorted(images))} images, every sub-pixel."
    )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], baselines: list[dict]):
    def draw(path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in runs:
            steps, minutes, bits = zip(*r["validation_curve"], strict=True)
            ax.plot(minutes, bits, marker="o", label=f"{r['model']} (validation)")
            ax.plot(
                [r["train_minutes"]],
                [r["bits_per_dim"]],
                marker="*",
                markersize=12,
                linestyle="none",
                color=ax.lines[-1].get_color(),
                label=f"{r['model']} (test)",
            )
        for b in baselines:
            ax.axhline(b["bits_per_dim"], linestyle="--", linewidth=1, color="gray")
            ax.text(
                0.99,
                b["bits_per_dim"],
                b["baseline"],
                transform=ax.get_yaxis_transform(),
                fontsize=8,
                ha="right",
                va="bottom",
                color="gray",
            )
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("bits per dimension")
        ax.set_title("CIFAR-10 (JPEG-decoded) as 3,072 sub-pixels")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    return draw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, help="NAME=WORKDIR (repeatable)")
    p.add_argument("--baselines", default="docs/results/cifar10_baselines_cpu.json")
    p.add_argument("--out", default="docs/results/cifar10_cpu.json")
    p.add_argument("--markdown", default="docs/results/cifar10_cpu.md")
    p.add_argument("--pictures", default=None, help="a samples PNG of reformer.sample to keep")
    args = p.parse_args()
    runs = []
    for item in args.run:
        name, sep, workdir = item.partition("=")
        if not sep:
            p.error(f"--run {item!r}: expected NAME=WORKDIR")
        runs.append(run_record(name, workdir))
    with open(args.baselines) as f:
        baselines = json.load(f)
    write_results(
        runs + baselines, args.out, args.markdown, table(runs, baselines), plot(runs, baselines)
    )
    if args.pictures:
        target = os.path.splitext(args.out)[0] + "_samples.png"
        shutil.copyfile(args.pictures, target)
        print(f"Copied {args.pictures} to {target}")


if __name__ == "__main__":
    main()
