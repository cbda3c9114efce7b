"""Reformer against the same-size Transformer on real enwik8 bytes, on CPU.

    python scripts/reproduce_enwik8_prefix.py \\
        --data ../shared/data/enwik8_prefix_4154399 --workdir runs/enwik8_prefix

Trains `configs/enwik8.py:cpu` twice through the normal trainer, with the same data, seed
and steps: as configured (reversible local + LSH layers) and as the baseline
(`attention_types=("full",)`, `residual="two_stream"`). Then scores the held-out test split
(every byte once, `reformer.evaluate`): the Reformer with 2, 4 and 8 hashes, the Transformer
once; and `xz -9e` on the same bytes, for scale. Writes `--out` (JSON, one record per row:
model, split, bpc, n_hashes, steps, train_minutes, device), a loss-curve PNG beside it and a
Markdown table (`--markdown`). Each run resumes if its workdir already holds a checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import os

from reformer.experiments.results import read_metrics, write_results, xz_bpc
from reformer.experiments.runs import train_and_load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = ("reformer", "transformer")
EVAL_HASHES = (2, 4, 8)


def load_config(data_path: str, tfds_dir: str, variant: str):
    from reformer.config import load_config_file

    c = load_config_file(os.path.join(REPO, "configs", "enwik8.py"), variant)
    c.data.path, c.data.tfds_dir = data_path, tfds_dir
    return c


def model_config(base, model: str, num_steps: int):
    c = copy.deepcopy(base)
    if model == "transformer":
        c.model.attention_types = ("full",)
        c.model.residual = "two_stream"
    if num_steps:
        c.train.num_steps = num_steps
    return c


def plot(workdirs: dict[str, str], xz: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, workdir), color in zip(workdirs.items(), ("C0", "C1"), strict=False):
        records = read_metrics(workdir)
        train = [r for r in records if r["split"] == "train"]
        evals = [r for r in records if r["split"] == "eval"]
        ax.plot(
            [r["step"] for r in train],
            [r["bits_per_token"] for r in train],
            color=color,
            alpha=0.6,
            label=f"{model}: train",
        )
        ax.plot(
            [r["step"] for r in evals],
            [r["bits_per_token"] for r in evals],
            "o--",
            color=color,
            label=f"{model}: validation",
        )
    ax.axhline(xz, color="gray", linestyle=":", label=f"xz -9e on the test bytes ({xz:.2f})")
    ax.set(xlabel="step", ylabel="bits per byte", title="enwik8 prefix (4.15 MB), 2 CPU cores")
    ax.set_ylim(2.0, 4.5)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(records: list[dict]) -> str:
    lines = [
        "| model | test bits/byte | hashes at evaluation | steps | training minutes |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        hashes = r["n_hashes"] if r["n_hashes"] else "-"
        steps = r["steps"] if r["steps"] else "-"
        minutes = f"{r['train_minutes']:.1f}" if r["train_minutes"] else "-"
        lines.append(f"| {r['model']} | {r['bpc']:.4f} | {hashes} | {steps} | {minutes} |")
    return "\n".join(lines) + "\n"


def record(model: str, result: dict, device: str, n_hashes=None, steps=None, minutes=None):
    """One row: the model's test bits per byte (a trained model's with its hashes at
    evaluation, steps and training minutes; `xz`'s with None)."""
    return {
        "model": model,
        "split": "test",
        "bpc": result["bits_per_token"],
        "n_hashes": n_hashes or None,
        "steps": steps,
        "train_minutes": None if minutes is None else round(minutes, 2),
        "bytes": result["tokens"],
        "device": device,
    }


def train_and_score(model: str, config, workdir: str, device: str) -> list[dict]:
    """Trains `model` (resuming `workdir`) and scores it on the test split: the Reformer with
    each of EVAL_HASHES, the Transformer once."""
    run = train_and_load(config, workdir, model)
    records = []
    for n_hashes in EVAL_HASHES if model == "reformer" else (0,):
        config.eval.split, config.eval.n_hashes = "test", n_hashes
        r = run.score(config)
        print(f"   test: {r['bits_per_token']:.4f} bits/byte ({n_hashes or '-'} hashes)")
        records.append(record(model, r, device, n_hashes, run.step, run.minutes))
    return records


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=os.path.join("..", "shared", "data", "enwik8_prefix_4154399"))
    p.add_argument("--workdir", default="runs/enwik8_prefix")
    p.add_argument("--tfds_dir", default="", help="Where TFDS prepares the data ('' = default).")
    p.add_argument("--variant", default="cpu", help="configs/enwik8.py variant")
    p.add_argument("--num_steps", type=int, default=0, help="Override train.num_steps.")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", default="", help="JSON (default WORKDIR/enwik8_prefix.json)")
    p.add_argument("--markdown", default="", help="Markdown (default WORKDIR/enwik8_prefix.md)")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        p.error(f"--models: {models} must be taken from {MODELS}")
    out = args.out or os.path.join(args.workdir, "enwik8_prefix.json")
    md = args.markdown or os.path.join(args.workdir, "enwik8_prefix.md")

    from absl import logging

    from reformer import data
    from reformer.training import sharding

    logging.set_verbosity(logging.WARNING)
    base = load_config(args.data, args.tfds_dir, args.variant)
    device = sharding.device_name()
    records, workdirs = [], {}
    for model in models:
        config = model_config(base, model, args.num_steps)
        workdir = workdirs[model] = os.path.join(args.workdir, model)
        print(f"== training the {model} in {workdir}", flush=True)
        records += train_and_score(model, config, workdir, device)
    test_bytes = data.byte_splits(base)["test"].tobytes()
    xz = xz_bpc(test_bytes)
    records.append(record("xz", {"bits_per_token": xz, "tokens": len(test_bytes)}, device))
    write_results(records, out, md, markdown(records), lambda png: plot(workdirs, xz, png))


if __name__ == "__main__":
    main()
