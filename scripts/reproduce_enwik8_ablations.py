"""The paper's enwik8 ablations (Figures 3 and 4) and a context-length study on real bytes.

    python scripts/reproduce_enwik8_ablations.py \\
        --data ../shared/data/enwik8_prefix_4154399 --workdir runs/ablations \\
        --out docs/results/enwik8_ablations_cpu.json

Models (3 layers, the paper's ablation depth), each trained through the normal trainer with
the same seed, so models of one sequence length see the same batches in the same order:
- Figure 3 (left): full attention with separate queries and keys (`full_separate_qk`)
  against shared-QK full attention (`full_shared_qk`), both regular Transformers
  (`model.residual = "standard"`: one residual stream, pre-LayerNorm);
- Figure 3 (right): the regular Transformer `full_shared_qk` against the reversible network
  of the same attention and widths (`full_shared_qk_reversible`, two streams);
- Figure 4: LSH attention trained with 1, 2, 4 and 8 hashes (`lsh1` .. `lsh8`, the same
  network as `full_shared_qk` with LSH in place of full attention), each evaluated with the
  hashes it was trained with and with 8;
- context: the Reformer (reversible, LSH, shared-QK) at several sequence lengths with the
  same number of tokens per step (`reformer_<length>`).
Every model is evaluated on the whole validation and test splits (every byte once, in
windows of its sequence length); `xz -9e` on the same test bytes is the reference.

Writes `--out` (one JSON record per model, evaluation and split), a PNG beside it (validation
bits per byte against steps, one panel per figure) and `--markdown` (the table of test bits
per byte). Each model has its own workdir under `--workdir`, so an interrupted run resumes;
`--models` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from reproduce_enwik8_prefix import read_metrics, xz_bpc  # noqa: E402

# name: (figures, attention, model.residual, n_hashes for training, sequence length or None)
MODELS = {
    "full_separate_qk": (("3",), "full", "standard", None, None),
    "full_shared_qk": (("3", "4"), "full_shared_qk", "standard", None, None),
    "full_shared_qk_reversible": (("3",), "full_shared_qk", "reversible", None, None),
    "lsh1": (("4",), "lsh", "standard", 1, None),
    "lsh2": (("4",), "lsh", "standard", 2, None),
    "lsh4": (("4",), "lsh", "standard", 4, None),
    "lsh8": (("4",), "lsh", "standard", 8, None),
}
EVAL_HASHES_EXTRA = 8  # Figure 4's models are also evaluated with this many hashes.

# Model sizes. `tokens` is the number of tokens per step: batch = tokens / seq_len.
SCALES = {
    "toy": dict(d_model=32, d_ff=64, n_heads=2, d_head=16, seq_len=256, tokens=512,
                context=(64, 128, 256), context_hashes=2, chunk=32, steps=3, lr=3e-3,
                warmup=1, eval_every=2, eval_batches=1),
    # Figures 3 and 4 at CPU scale: 2 heads and one sequence per step, so that the seven
    # models train 700 steps each in about an hour on 2 cores (docs/results.md).
    "cpu": dict(d_model=128, d_ff=512, n_heads=4, d_head=32, seq_len=4096, tokens=8192,
                context=(512, 2048, 8192), context_hashes=2, chunk=64, steps=450, lr=3e-3,
                warmup=100, eval_every=100, eval_batches=2,
                ablation=dict(n_heads=2, tokens=4096, steps=700)),
    "gpu": dict(d_model=512, d_ff=2048, n_heads=8, d_head=64, seq_len=16384, tokens=65536,
                context=(1024, 4096, 16384, 65536), context_hashes=4, chunk=128, steps=5000,
                lr=1e-3, warmup=500, eval_every=500, eval_batches=4),
}  # fmt: skip


def context_models(scale: dict) -> dict:
    return {
        f"reformer_{n}": (("context",), "lsh", "reversible", scale["context_hashes"], n)
        for n in scale["context"]
    }


def all_models(scale: dict) -> dict:
    return {**MODELS, **context_models(scale)}


def axial_shape(seq_len: int) -> tuple[int, int]:
    """A near-square axial grid whose product is seq_len (a power of two)."""
    rows = 1 << (seq_len.bit_length() - 1) // 2
    return seq_len // rows, rows


def model_config(
    data_path: str, tfds_dir: str, scale: dict, spec: tuple, steps: int = 0, seed: int = 0
):
    from reformer.config import default_config

    _, attention, residual, n_hashes, seq_len = spec
    if seq_len is None:  # Figures 3 and 4 (not the context study): the scale's overrides.
        scale = {**scale, **scale.get("ablation", {})}
    seq_len = seq_len or scale["seq_len"]
    c = default_config()
    m = c.model
    m.vocab_size, m.causal, m.n_layers = 258, True, 3
    m.d_model, m.d_ff = scale["d_model"], scale["d_ff"]
    m.n_heads, m.d_head = scale["n_heads"], scale["d_head"]
    m.attention_types, m.residual = (attention,), residual
    m.n_hashes = n_hashes or 1
    m.lsh_chunk_len, m.n_buckets = scale["chunk"], 0  # About 2 L / chunk buckets.
    m.positional = "axial"
    m.axial_shape = axial_shape(seq_len)
    m.axial_dims = (m.d_model // 2, m.d_model // 2)
    m.max_len = c.data.seq_len = seq_len
    m.dropout = m.attention_dropout = 0.0
    c.data.name, c.data.path, c.data.tfds_dir = "enwik8", data_path, tfds_dir
    c.train.batch_size = max(1, scale["tokens"] // seq_len)
    c.train.num_steps = steps or scale["steps"]
    c.train.seed = seed  # Parameters, data order and hashing.
    c.train.log_every = max(1, scale["eval_every"] // 4)
    c.train.eval_every = scale["eval_every"]
    c.train.checkpoint_every = scale["eval_every"]
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = scale["lr"]
    c.optimizer.warmup_steps = scale["warmup"]
    c.optimizer.schedule = "rsqrt"
    c.eval.batch_size = max(1, scale["tokens"] // seq_len)
    c.eval.num_batches = scale["eval_batches"]
    return c


def eval_hashes(spec: tuple) -> tuple:
    n = spec[3]
    if n is None:
        return (None,)
    return (n,) if n == EVAL_HASHES_EXTRA or "4" not in spec[0] else (n, EVAL_HASHES_EXTRA)


def record(name, figure, spec, config, result: dict, n_eval, minutes: float) -> dict:
    _, attention, residual, n_train, _ = spec
    return {
        "figure": figure,
        "model": name,
        "attention_types": list(config.model.attention_types),
        "shared_qk": attention != "full",
        "residual": residual,
        "reversible": residual == "reversible",
        "n_hashes_train": n_train,
        "n_hashes_eval": n_eval,
        "split": result["split"],
        "bits_per_byte": result["bits_per_byte"],
        "bytes": result["tokens"],
        "seq_len": config.data.seq_len,
        "batch_size": config.train.batch_size,
        "steps": result["step"],
        "seed": config.train.seed,
        "train_minutes": round(minutes, 2),
        "params": {
            k: config.model[k] for k in ("n_layers", "d_model", "d_ff", "n_heads", "d_head")
        },
        "device": result["device"],
    }


PANELS = (
    ("3", "Figure 3 (left): shared-QK", ("full_separate_qk", "full_shared_qk")),
    ("3", "Figure 3 (right): reversible", ("full_shared_qk", "full_shared_qk_reversible")),
    ("4", "Figure 4: LSH hashes", ("full_shared_qk", "lsh1", "lsh2", "lsh4", "lsh8")),
    ("context", "Context length (Reformer)", None),
)


def plot(workdirs: dict[str, str], xz: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def shown(names):  # Only the panels with a model in this run (--models runs a subset).
        if names is None:
            return any(n.startswith("reformer_") for n in workdirs)
        return any(n in workdirs for n in names)

    panels = [p for p in PANELS if shown(p[2])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), sharey=True,
                             squeeze=False)  # fmt: skip
    axes = axes[0]
    for ax, (_, title, names) in zip(axes, panels, strict=True):
        names = names or sorted(
            (n for n in workdirs if n.startswith("reformer_")), key=lambda n: int(n.split("_")[1])
        )
        for name in names:
            if name not in workdirs or not os.path.exists(
                os.path.join(workdirs[name], "metrics.jsonl")
            ):
                continue
            evals = [r for r in read_metrics(workdirs[name]) if r["split"] == "eval"]
            ax.plot([r["step"] for r in evals], [r["bits_per_token"] for r in evals], "o-",
                    ms=3, label=name)  # fmt: skip
        ax.axhline(xz, color="gray", ls="--", lw=1, label="xz -9e (test)")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("validation bits per byte")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def residual_of(r: dict) -> str:
    """A record's `model.residual`; records written before that field hold `reversible`
    (their non-reversible models ran `two_stream`)."""
    return r.get("residual") or ("reversible" if r["reversible"] else "two_stream")


def markdown(records: list[dict]) -> str:
    lines = [
        "| figure | model | length | residual | hashes (train / eval) | validation bits/byte "
        "| test bits/byte | steps | training minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows: dict[tuple, dict] = {}
    for r in records:
        key = (r["model"], r["n_hashes_eval"])
        rows.setdefault(key, {}).setdefault(r["split"], r)
    figures: dict[tuple, list] = {}
    for r in records:
        figures.setdefault((r["model"], r["n_hashes_eval"]), [])
        if r["figure"] not in figures[(r["model"], r["n_hashes_eval"])]:
            figures[(r["model"], r["n_hashes_eval"])].append(r["figure"])
    for (model, n_eval), splits in rows.items():
        r = splits.get("test") or splits.get("validation")
        if model == "xz":
            lines.append(f"| - | xz -9e | - | - | - | - | {r['bits_per_byte']:.4f} | - | - |")
            continue
        fig = ", ".join(figures[(model, n_eval)])
        hashes = "-" if r["n_hashes_train"] is None else f"{r['n_hashes_train']} / {n_eval}"
        val = splits.get("validation", {}).get("bits_per_byte")
        test = splits.get("test", {}).get("bits_per_byte")
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        lines.append(
            f"| {fig} | {model} | {r['seq_len']:,} | {residual_of(r)} | "
            f"{hashes} | {fmt(val)} | {fmt(test)} | {r['steps']} | {r['train_minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=os.path.join("..", "shared", "data", "enwik8_prefix_4154399"))
    p.add_argument("--workdir", default="runs/enwik8_ablations")
    p.add_argument("--tfds_dir", default="", help="Where TFDS prepares the data ('' = default).")
    p.add_argument("--scale", default="cpu", choices=tuple(SCALES))
    p.add_argument("--num_steps", type=int, default=0, help="Override the scale's steps.")
    p.add_argument("--models", default="", help="Comma-separated subset (default: all).")
    p.add_argument(
        "--seed", type=int, default=0, help="train.seed of every model (parameters, data order)."
    )
    p.add_argument("--out", default="", help="JSON (default WORKDIR/enwik8_ablations.json)")
    p.add_argument("--markdown", default="", help="Markdown (default beside --out)")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    models = all_models(scale)
    names = [m.strip() for m in args.models.split(",") if m.strip()] or list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        p.error(f"--models: unknown {unknown}; allowed: {', '.join(models)}")
    if not os.path.exists(args.data):
        p.error(f"--data: {args.data} does not exist (the enwik8 prefix is in ../shared/data)")
    out = args.out or os.path.join(args.workdir, "enwik8_ablations.json")
    md = args.markdown or os.path.splitext(out)[0] + ".md"

    from absl import logging

    from reformer import data, evaluate, sharding, trainer

    logging.set_verbosity(logging.WARNING)
    records, workdirs = [], {}
    total_start = time.time()
    for name in names:
        spec = models[name]
        config = model_config(args.data, args.tfds_dir, scale, spec, args.num_steps, args.seed)
        workdir = workdirs[name] = os.path.join(args.workdir, name)
        print(f"== {name}: {config.data.seq_len} bytes x {config.train.batch_size}, "
              f"{config.train.num_steps} steps, in {workdir}", flush=True)  # fmt: skip
        start = time.time()
        trainer.train_and_evaluate(config, workdir)
        minutes = (time.time() - start) / 60
        mesh = sharding.make_mesh()
        params, step = evaluate.load_params(config, workdir, mesh)
        if step < config.train.num_steps:  # Stopped (SIGTERM, Ctrl-C): resume later.
            sys.exit(f"Stopped in {name} at step {step}; rerun the command to resume.")
        for n_eval in eval_hashes(spec):
            config.eval.n_hashes = n_eval or 0
            eval_fn = evaluate.jitted_eval_fn(config, params, mesh)  # Both splits.
            for split in ("validation", "test"):
                config.eval.split = split
                r = evaluate.evaluate_params(config, params, step, mesh, eval_fn)
                for figure in spec[0]:  # full_shared_qk belongs to Figures 3 and 4.
                    records.append(record(name, figure, spec, config, r, n_eval, minutes))
                print(f"   {split}: {r['bits_per_byte']:.4f} bits/byte "
                      f"({n_eval or '-'} hashes)", flush=True)  # fmt: skip
    base = model_config(args.data, args.tfds_dir, scale, MODELS["full_shared_qk"])
    test_bytes = data.byte_splits(base)["test"].tobytes()
    xz = xz_bpc(test_bytes)
    records.append(
        {"figure": None, "model": "xz", "split": "test", "bits_per_byte": xz,
         "bytes": len(test_bytes), "n_hashes_train": None, "n_hashes_eval": None,
         "device": sharding.device_name()}
    )  # fmt: skip
    for path in (out, md):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(records, f, indent=1)
    with open(md, "w") as f:
        f.write(markdown(records))
    png = os.path.splitext(out)[0] + ".png"
    plot(workdirs, xz, png)
    print(markdown(records))
    print(f"Wrote {out}, {md} and {png} in {(time.time() - total_start) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
