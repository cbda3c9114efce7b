"""The paper's enwik8 ablations (Figures 3 and 4), and a context-length study, on real bytes.

    python scripts/reproduce_enwik8_ablations.py \\
        --data ../shared/data/enwik8_prefix_4154399 --workdir runs/ablations \\
        --out docs/results/enwik8_ablations_cpu.json

Models (3 layers, the paper's ablation depth), each trained through the normal trainer with
the same tokens per step, steps and seed, so that they see the same batches in the same order:
- Figure 3 (left): full attention with separate queries and keys (`full_separate_qk`)
  against shared-QK full attention (`full_shared_qk`), both regular Transformers
  (`model.residual = "standard"`: one residual stream, pre-LayerNorm);
- Figure 3 (right): the regular Transformer `full_shared_qk` against the reversible network
  of the same attention, widths and steps (`full_shared_qk_reversible`, two streams);
- Figure 4: LSH attention trained with 1, 2, 4 and 8 hashes (`lsh1` .. `lsh8`, the same
  network as `full_shared_qk` with LSH in place of full attention), each evaluated with the
  hashes it was trained with and with 8.
Where the two models of one of the paper's comparisons end within `--second_seed_below` of
each other on the validation split (2% by default), both are trained again with the seed
after the largest of `--seeds`, so that the difference can be set against the spread between
seeds.

`--models context` (not part of the default run) trains the context-length study instead:
the Reformer (reversible, LSH, shared-QK) at several sequence lengths with the same number of
tokens per step (`reformer_<length>`).

Every model is scored on the whole validation and test splits (every byte once, in windows of
its sequence length); `xz -9e` on the same bytes is the reference. Writes `--out` (one
JSON record per model, seed, evaluation and split), a PNG beside it (validation bits per byte
against steps, one panel per figure, every seed) and `--markdown` (the table of bits per byte
and the paper's comparisons). Each model and seed has its own workdir under `--workdir`
(`<model>`, `<model>_seed<k>` for seeds other than 0), and keeps its scores there once
evaluated: started again, the script skips finished models and resumes a partial one from
its last checkpoint, so an interrupted run goes on where it was.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

from reformer.experiments.results import read_metrics, write_results, xz_bpc
from reformer.experiments.runs import train_and_load

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

# The paper's comparisons, (claim, baseline, model): in this order a second seed is given.
COMPARISONS = (
    ("shared-QK against separate QK (Figure 3)", "full_separate_qk", "full_shared_qk"),
    ("reversible against regular (Figure 3)", "full_shared_qk", "full_shared_qk_reversible"),
    ("LSH-8 against full attention (Figure 4)", "full_shared_qk", "lsh8"),
    ("LSH-4 against LSH-8 (Figure 4)", "lsh8", "lsh4"),
    ("LSH-2 against LSH-4 (Figure 4)", "lsh4", "lsh2"),
    ("LSH-1 against LSH-2 (Figure 4)", "lsh2", "lsh1"),
)

# Model sizes. `tokens` is the number of tokens per step: batch = tokens / seq_len; `chunk`
# the LSH chunk length (a query sees its chunk and the one before: for Figures 3 and 4 two
# chunks are at most 1/8 of seq_len);
# `buckets` the LSH buckets (0: about 2 seq_len / chunk). `context` overrides the settings for
# the context-length study.
SCALES = {
    "toy": dict(d_model=32, d_ff=64, n_heads=2, d_head=16, seq_len=256, tokens=512, chunk=16,
                buckets=0, steps=3, lr=3e-3, warmup=1, eval_every=2, eval_batches=1,
                context=dict(lengths=(64, 128, 256), hashes=2, chunk=32)),
    # Figures 3 and 4 on 2 CPU cores, sized on the validation split so that every model ends
    # below xz -9e (docs/results.md).
    "cpu": dict(d_model=128, d_ff=512, n_heads=4, d_head=32, seq_len=1024, tokens=4096,
                chunk=64, buckets=2, steps=4000, lr=3e-3, warmup=150, eval_every=250,
                eval_batches=16,
                context=dict(lengths=(512, 2048, 8192), hashes=2, tokens=8192, buckets=0,
                             steps=450, warmup=100, eval_every=100, eval_batches=2)),
    "gpu": dict(d_model=512, d_ff=2048, n_heads=8, d_head=64, seq_len=16384, tokens=65536,
                chunk=128, buckets=0, steps=5000, lr=1e-3, warmup=500, eval_every=500,
                eval_batches=4, context=dict(lengths=(1024, 4096, 16384, 65536), hashes=4)),
}  # fmt: skip


def with_settings(scale: dict, items: list[str]) -> dict:
    """The scale with `KEY=VALUE` overrides (`--set`), each checked against the key's type."""
    scale = dict(scale)
    for item in items:
        key, _, text = item.partition("=")
        if key not in scale or key == "context" or not text:
            allowed = ", ".join(k for k in scale if k != "context")
            raise ValueError(f"--set {item}: use KEY=VALUE with KEY one of {allowed}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        kind = type(scale[key])
        if type(value) not in ((int, float) if kind is float else (kind,)):
            what = "a number" if kind is float else f"of type {kind.__name__}"
            raise ValueError(f"--set {item}: the value must be {what}, not {value!r}")
        scale[key] = kind(value)
    return scale


def context_models(scale: dict) -> dict:
    c = scale["context"]
    return {
        f"reformer_{n}": (("context",), "lsh", "reversible", c["hashes"], n) for n in c["lengths"]
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
    if seq_len is not None:  # The context study: its own settings.
        scale = {**scale, **scale["context"]}
    seq_len = seq_len or scale["seq_len"]
    c = default_config()
    m = c.model
    m.vocab_size, m.causal, m.n_layers = 258, True, 3
    m.d_model, m.d_ff = scale["d_model"], scale["d_ff"]
    m.n_heads, m.d_head = scale["n_heads"], scale["d_head"]
    m.attention_types, m.residual = (attention,), residual
    m.n_hashes = n_hashes or 1
    m.lsh_chunk_len, m.n_buckets = scale["chunk"], scale["buckets"]
    m.positional = "axial"
    m.axial_shape = axial_shape(seq_len)
    m.axial_dims = (m.d_model // 2, m.d_model // 2)
    m.max_len = c.data.seq_len = seq_len
    m.dropout = m.attention_dropout = 0.0
    c.data.name, c.data.path, c.data.tfds_dir = "enwik8", data_path, tfds_dir
    c.train.batch_size = max(1, scale["tokens"] // seq_len)
    c.train.num_steps = steps or scale["steps"]
    c.train.seed = seed  # Parameters, data order and hashing.
    c.train.log_every = max(1, scale["eval_every"] // 5)
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


def run_name(name: str, seed: int) -> str:
    """A model's workdir under --workdir: `<name>` for seed 0, `<name>_seed<k>` otherwise."""
    return name if seed == 0 else f"{name}_seed{seed}"


def train_minutes(workdir: str) -> float:
    """Minutes of training steps (compilation, evaluations and saves excluded), from the
    logged speed of every interval; an interval run again after a resume counts once."""
    intervals = {r["step"]: r for r in read_metrics(workdir) if r["split"] == "train"}
    seconds, previous = 0.0, 0
    for step in sorted(intervals):
        seconds += (step - previous) / intervals[step]["steps_per_sec"]
        previous = step
    return seconds / 60


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
        "train_minutes": round(minutes, 4),
        "params": {
            k: config.model[k]
            for k in ("n_layers", "d_model", "d_ff", "n_heads", "d_head", "lsh_chunk_len")
        },
        "device": result["device"],
    }


RECORDS_FILE = "ablation_records.json"  # A finished model's scores, in its workdir.


# What a model is and how it was trained; where its data lives may differ between runs.
SAME_RUN_GROUPS, DATA_LOCATION = ("model", "optimizer", "train", "data"), ("path", "tfds_dir")


def run_settings(config_dict: dict) -> dict:
    settings = {g: dict(config_dict.get(g, {})) for g in SAME_RUN_GROUPS}
    for key in DATA_LOCATION:
        settings["data"].pop(key, None)
    return settings


def scored(config, workdir: str) -> list[dict] | None:
    """The scores a previous run left in `workdir`, if that run trained the model `config`
    describes (settings and steps alike); None otherwise."""
    path = os.path.join(workdir, RECORDS_FILE)
    trained = os.path.join(workdir, "config.json")
    if not (os.path.exists(path) and os.path.exists(trained)):
        return None
    with open(trained) as f:
        if run_settings(json.load(f)) != run_settings(json.loads(config.to_json())):
            return None
    with open(path) as f:
        saved = json.load(f)
    if not saved or any(r["steps"] != config.train.num_steps for r in saved):
        return None
    print(f"   scored before: {path}", flush=True)
    return saved


def train_and_score(name: str, spec: tuple, config, workdir: str) -> list[dict]:
    """Trains one model (resuming its workdir) and scores it on both splits, or reads the
    scores a previous run left; exits when training was stopped before the last step."""
    saved = scored(config, workdir)
    if saved is not None:
        return saved
    run = train_and_load(config, workdir, os.path.basename(workdir))
    if run.step > config.train.num_steps:
        sys.exit(
            f"{workdir} holds step {run.step}, past the {config.train.num_steps} steps asked "
            "for; use another --workdir or --num_steps >= that step."
        )
    minutes = train_minutes(workdir)
    records = []
    for n_eval in eval_hashes(spec):
        config.eval.n_hashes = n_eval or 0
        eval_fn = run.eval_fn(config)  # Both splits.
        for split in ("validation", "test"):
            config.eval.split = split
            r = run.score(config, eval_fn)
            for figure in spec[0]:  # full_shared_qk belongs to Figures 3 and 4.
                records.append(record(name, figure, spec, config, r, n_eval, minutes))
            print(f"   {split}: {r['bits_per_byte']:.4f} bits/byte "
                  f"({n_eval or '-'} hashes)", flush=True)  # fmt: skip
    path = os.path.join(workdir, RECORDS_FILE)
    with open(path + ".tmp", "w") as f:  # Written whole or not at all.
        json.dump(records, f, indent=1)
    os.replace(path + ".tmp", path)
    return records


def score(records: list[dict], model: str, seed: int, split: str) -> float | None:
    """Bits per byte of `model` and `seed` on `split`, with the hashes it was trained with."""
    for r in records:
        if (r["model"], r.get("seed", 0), r["split"]) == (model, seed, split) and (
            r["n_hashes_eval"] == r["n_hashes_train"]
        ):
            return r["bits_per_byte"]
    return None


def second_seed_models(records: list[dict], seed: int, below: float) -> list[str]:
    """The models of every comparison whose two models, trained with `seed`, end within
    `below` (a fraction) of each other on the validation split; in COMPARISONS' order."""
    names: list[str] = []
    for _, a, b in COMPARISONS:
        va, vb = score(records, a, seed, "validation"), score(records, b, seed, "validation")
        if va is not None and vb is not None and abs(vb - va) < below * min(va, vb):
            names += [n for n in (a, b) if n not in names]
    return names


PANELS = (
    ("Figure 3 (left): shared-QK", ("full_separate_qk", "full_shared_qk")),
    ("Figure 3 (right): reversible", ("full_shared_qk", "full_shared_qk_reversible")),
    ("Figure 4: LSH hashes", ("full_shared_qk", "lsh1", "lsh2", "lsh4", "lsh8")),
    ("Context length (Reformer)", None),
)


def plot(workdirs: dict[tuple[str, int], str], xz: float, path: str) -> None:
    """Validation bits per byte against steps: one panel per figure, one colour per model,
    one line per seed (the first solid, others dashed) and the band between seeds; `xz` is
    xz -9e's bits per byte on the validation bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {n for n, _ in workdirs}
    context = sorted((n for n in names if n.startswith("reformer_")),
                     key=lambda n: int(n.split("_")[1]))  # fmt: skip
    panels = [(t, m or context) for t, m in PANELS if set(m or context) & names]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), sharey=True,
                             squeeze=False)  # fmt: skip
    values, finals = [xz], [xz]  # The y range: from the lowest value to 1.3 above the ends.
    for ax, (title, models) in zip(axes[0], panels, strict=True):
        for name in models:
            color = f"C{(list(MODELS) + context).index(name) % 10}"  # One per model.
            curves = {}
            for (n, seed), wd in sorted(workdirs.items()):
                if n == name and os.path.exists(os.path.join(wd, "metrics.jsonl")):
                    evals = {r["step"]: r["bits_per_token"] for r in read_metrics(wd)
                             if r["split"] == "eval"}  # fmt: skip
                    curves[seed] = evals
            for j, (seed, evals) in enumerate(sorted(curves.items())):
                steps = sorted(evals)
                values += list(evals.values())
                finals.append(evals[steps[-1]])
                ax.plot(steps, [evals[s] for s in steps], "o-" if j == 0 else "s--", ms=3,
                        color=color, label=f"{name} (seed {seed})" if len(curves) > 1
                        else name)  # fmt: skip
            if len(curves) > 1:
                common = sorted(set.intersection(*(set(e) for e in curves.values())))
                band = [[e[s] for e in curves.values()] for s in common]
                ax.fill_between(common, [min(v) for v in band], [max(v) for v in band],
                                color=color, alpha=0.2, lw=0)  # fmt: skip
        ax.axhline(xz, color="gray", ls="--", lw=1, label="xz -9e (validation)")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation bits per byte")
    axes[0][0].set_ylim(min(values) - 0.05, min(max(values), max(finals) + 1.3) + 0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def residual_of(r: dict) -> str:
    """A record's `model.residual`; records written before that field hold `reversible`
    (their non-reversible models ran `two_stream`)."""
    return r.get("residual") or ("reversible" if r["reversible"] else "two_stream")


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def markdown(records: list[dict]) -> str:
    lines = [
        "| figure | model | seed | length | residual | hashes (train / eval) "
        "| validation bits/byte | test bits/byte | steps | training minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows: dict[tuple, dict] = {}
    figures: dict[tuple, list] = {}
    for r in records:
        key = (r["model"], r.get("seed"), r["n_hashes_eval"])
        rows.setdefault(key, {}).setdefault(r["split"], r)
        if r["figure"] not in figures.setdefault(key, []):
            figures[key].append(r["figure"])
    for (model, seed, n_eval), splits in rows.items():
        r = splits.get("test") or splits.get("validation")
        if model == "xz":
            val = fmt(splits.get("validation", {}).get("bits_per_byte"))
            test = fmt(splits.get("test", {}).get("bits_per_byte"))
            lines.append(f"| - | xz -9e | - | - | - | - | {val} | {test} | - | - |")
            continue
        hashes = "-" if r["n_hashes_train"] is None else f"{r['n_hashes_train']} / {n_eval}"
        val = splits.get("validation", {}).get("bits_per_byte")
        test = splits.get("test", {}).get("bits_per_byte")
        lines.append(
            f"| {', '.join(figures[(model, seed, n_eval)])} | {model} | {seed} | "
            f"{r['seq_len']:,} | {residual_of(r)} | {hashes} | {fmt(val)} | {fmt(test)} | "
            f"{r['steps']} | {r['train_minutes']:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    compared = []
    for claim, a, b in COMPARISONS:
        for seed in sorted({r.get("seed", 0) for r in records if r["model"] in (a, b)}):
            scores = {s: (score(records, a, seed, s), score(records, b, seed, s))
                      for s in ("validation", "test")}  # fmt: skip
            if None in scores["validation"] + scores["test"]:
                continue
            diff = {s: f"{100 * (y - x) / x:+.2f}%" for s, (x, y) in scores.items()}
            compared.append(
                f"| {claim} | {b} against {a} | {seed} | {fmt(scores['validation'][1])} / "
                f"{fmt(scores['validation'][0])} ({diff['validation']}) | "
                f"{fmt(scores['test'][1])} / {fmt(scores['test'][0])} ({diff['test']}) |"
            )
    if compared:
        table += (
            "\nThe paper's comparisons (bits per byte with the hashes each model trained with; "
            "the difference relative to the second model):\n\n"
            "| comparison | models | seed | validation | test |\n|---|---|---|---|---|\n"
            + "\n".join(compared) + "\n"
        )  # fmt: skip
    return table


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked (`check_args`), with the default output paths filled in."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=os.path.join("..", "shared", "data", "enwik8_prefix_4154399"))
    p.add_argument("--workdir", default="runs/enwik8_ablations")
    p.add_argument("--tfds_dir", default="", help="Where TFDS prepares the data ('' = default).")
    p.add_argument("--scale", default="cpu", choices=tuple(SCALES))
    p.add_argument("--num_steps", type=int, default=0, help="Override the scale's steps.")
    p.add_argument(
        "--models", default="",
        help="Comma-separated subset (default: Figures 3 and 4); 'context' for the study.",
    )  # fmt: skip
    p.add_argument("--seeds", default="0", help="Comma-separated train.seed of every model.")
    p.add_argument(
        "--second_seed_below", type=float, default=0.02,
        help="Train both models of a comparison with the next seed when they end within this "
        "fraction of each other on the validation split (0: never).",
    )  # fmt: skip
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="Override a setting of the scale, e.g. --set buckets=4 --set tokens=8192 (how "
        "the sizes were chosen, docs/results.md).",
    )  # fmt: skip
    p.add_argument(
        "--report_only", action="store_true",
        help="Train nothing: write the JSON, table and plot from the models scored so far "
        "(while a long run goes on in another process).",
    )  # fmt: skip
    p.add_argument("--out", default="", help="JSON (default WORKDIR/enwik8_ablations.json)")
    p.add_argument("--markdown", default="", help="Markdown (default beside --out)")
    args = p.parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    args.out = args.out or os.path.join(args.workdir, "enwik8_ablations.json")
    args.markdown = args.markdown or os.path.splitext(args.out)[0] + ".md"
    return args


def check_args(args: argparse.Namespace) -> None:
    """Adds `settings` (the scale after `--set`), `specs` (every model of the scale), `names`
    (the models to train, in order) and `seed_list`; ValueError names what is wrong."""
    args.settings = with_settings(SCALES[args.scale], args.set)
    args.specs = specs = all_models(args.settings)
    names = [m.strip() for m in args.models.split(",") if m.strip()] or list(MODELS)
    if "context" in names:
        i = names.index("context")
        names[i : i + 1] = list(context_models(args.settings))
    args.names = names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; allowed: context, {', '.join(specs)}")
    try:
        args.seed_list = list(dict.fromkeys(int(s) for s in args.seeds.split(",")))
    except ValueError:
        raise ValueError(
            f"--seeds: {args.seeds!r} is not a comma-separated list of integers"
        ) from None
    fixed = {i.partition("=")[0] for i in args.set} & set(args.settings["context"])
    if fixed and any(n.startswith("reformer_") for n in names):
        raise ValueError(f"--set {', '.join(sorted(fixed))}: the context study has its own "
                         f"value (SCALES['{args.scale}']['context']); run it without "
                         "these --set")  # fmt: skip
    if not 0 <= args.second_seed_below < 1:
        raise ValueError(f"--second_seed_below: {args.second_seed_below} is not in [0, 1)")
    if not os.path.exists(args.data):
        raise ValueError(
            f"--data: {args.data} does not exist (the enwik8 prefix is in ../shared/data)"
        )


class Runs:
    """The models trained (or read back) so far: their records, workdirs and the runs left
    out because `--report_only` found them unscored."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.records, self.workdirs, self.missing = args, [], {}, []

    def run(self, name: str, seed: int) -> None:
        args, spec = self.args, self.args.specs[name]
        config = model_config(args.data, args.tfds_dir, args.settings, spec, args.num_steps, seed)
        workdir = os.path.join(args.workdir, run_name(name, seed))
        self.workdirs[(name, seed)] = workdir
        print(f"== {name}, seed {seed}: {config.data.seq_len} bytes x "
              f"{config.train.batch_size}, {config.train.num_steps} steps, in {workdir}",
              flush=True)  # fmt: skip
        if not args.report_only:
            self.records.extend(train_and_score(name, spec, config, workdir))
        elif (saved := scored(config, workdir)) is not None:
            self.records.extend(saved)
        else:
            print("   not scored yet: left out", flush=True)
            self.missing.append(run_name(name, seed))

    def run_all(self) -> None:
        """Every model with every seed, then a second seed where a comparison is too close
        to call."""
        args = self.args
        for seed in args.seed_list:
            for name in args.names:
                self.run(name, seed)
        if args.second_seed_below:
            extra = max(args.seed_list) + 1
            seed, below = args.seed_list[0], args.second_seed_below
            for name in second_seed_models(self.records, seed, below):
                if name in args.names and (name, extra) not in self.workdirs:
                    self.run(name, extra)

    def scored_workdirs(self) -> dict[tuple[str, int], str]:
        return {k: wd for k, wd in self.workdirs.items() if run_name(*k) not in self.missing}


def xz_records(args: argparse.Namespace) -> list[dict]:
    """`xz -9e`'s bits per byte on the validation and test bytes: the reference."""
    from reformer import data
    from reformer.training import sharding

    base = model_config(args.data, args.tfds_dir, args.settings, MODELS["full_shared_qk"])
    splits = data.byte_splits(base)
    return [
        {"figure": None, "model": "xz", "split": split,
         "bits_per_byte": xz_bpc(splits[split].tobytes()), "bytes": len(splits[split]),
         "n_hashes_train": None, "n_hashes_eval": None, "device": sharding.device_name()}
        for split in ("validation", "test")
    ]  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    start = time.time()
    runs = Runs(args)
    runs.run_all()
    xz = xz_records(args)
    records = runs.records + xz
    write_results(
        records, args.out, args.markdown, markdown(records),
        lambda png: plot(runs.scored_workdirs(), xz[0]["bits_per_byte"], png),
        note=f" in {(time.time() - start) / 60:.1f} minutes",
    )  # fmt: skip
    if runs.missing:
        print(f"Not scored yet, so left out: {', '.join(runs.missing)}")


if __name__ == "__main__":
    main()
