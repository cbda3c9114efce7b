"""The paper's translation experiment (Table 4) at CPU scale: Multi30k English-German.

    python scripts/reproduce_multi30k.py --workdir runs/multi30k

Trains `configs/multi30k.py:cpu` through the normal trainer twice, with the same data, seed,
vocabulary and number of steps: the reversible encoder-decoder as configured and the regular
Transformer (`model.residual="standard"`). A checkpoint is kept every `--bleu_every` steps;
once a run is trained, each of them is decoded with beam search (beam 4, alpha 0.6, as
`reformer.evaluate` does) over the whole validation split and scored with sacreBLEU, so the
curve shows BLEU against the training minutes at that step (minutes of training steps only,
as the trainer's steps/s counts them: compilation, evaluations and saves left out). The last
checkpoint's score is the result; no checkpoint is selected on validation. (`--curve` names
the runs whose every checkpoint is scored; the others only their last.)

Writes `--out` (JSON, one record per scored checkpoint: config, residual, split, bleu_cased,
bleu_uncased, signature, train_minutes, steps, device, final), a PNG of BLEU against training
minutes beside it and a Markdown table (`--markdown`). Everything resumes: a run with a
checkpoint continues from it, and scored checkpoints are not decoded again
(`WORKDIR/RESIDUAL/bleu_<step>.json`), so a run cut off goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from reformer.experiments.results import read_metrics, write_results
from reformer.experiments.runs import stop_if_unfinished, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RESIDUALS = ("reversible", "standard")
CONFIG = "configs/multi30k.py"


def load_config(variant: str, residual: str, root: str, num_steps: int, bleu_every: int):
    from reformer.config import load_config_file

    c = load_config_file(os.path.join(REPO, CONFIG), variant)
    c.model.residual = residual
    c.data.vocab_path = os.path.join(root, "vocab.model")  # One vocabulary for both runs.
    if num_steps:
        c.train.num_steps = num_steps
    c.train.checkpoint_every = bleu_every
    # Every scored step, and a few more where a run was stopped and resumed in between.
    c.train.keep_checkpoints = c.train.num_steps // bleu_every + 4
    return c


def train_minutes(workdir: str) -> dict[int, float]:
    """Cumulative training minutes at every step up to the last logged one, from the
    trainer's steps/s (the time of training steps only; a step inside a log interval, such
    as one a run was stopped at, at its interval's rate)."""
    minutes, total, last = {0: 0.0}, 0.0, 0
    train_records = (r for r in read_metrics(workdir) if r["split"] == "train")
    for r in sorted(train_records, key=lambda r: r["step"]):
        for step in range(last + 1, r["step"] + 1):
            total += 1 / r["steps_per_sec"] / 60
            minutes[step] = total
        last = r["step"]
    return minutes


def score_checkpoints(config, workdir: str, every: bool = True) -> list[dict]:
    """The BLEU record of every kept checkpoint of `workdir` (with `every=False` the last
    only; cached in bleu_<step>.json)."""
    from reformer.evaluation.translation import translation_bleu
    from reformer.training import checkpoints, sharding, state

    mesh = sharding.make_mesh(config.mesh)
    model = state.make_model(config)
    abstract_params = state.abstract_params(config, model, mesh)
    manager = checkpoints.make_manager(workdir, config.train.keep_checkpoints, create=False)
    scored = []
    try:
        steps = sorted(manager.all_steps())
        for step in steps if every else steps[-1:]:
            path = os.path.join(workdir, f"bleu_{step}.json")
            if not os.path.exists(path):
                restored, _ = checkpoints.restore(manager, step, {"params": abstract_params})
                hypotheses, scores = translation_bleu(
                    config, model.cfg, restored["params"], workdir
                )
                scores["step"] = step
                with open(os.path.join(workdir, f"bleu_{step}.hyp.txt"), "w") as f:
                    f.write("\n".join(hypotheses) + "\n")
                with open(path, "w") as f:
                    json.dump(scores, f, indent=1)
                print(
                    f"   step {step}: BLEU {scores['bleu_cased']:.2f} cased, "
                    f"{scores['bleu_uncased']:.2f} uncased "
                    f"(decoded in {scores['decode_seconds']:.0f} s)",
                    flush=True,
                )
            with open(path) as f:
                scored.append(json.load(f))
    finally:
        manager.close()
    return scored


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for residual, color in zip(RESIDUALS, ("C0", "C1"), strict=True):
        rs = [r for r in records if r["residual"] == residual]
        if not rs:
            continue
        label = "reversible (Reformer)" if residual == "reversible" else "regular Transformer"
        for ax, x in zip(axes, ("train_minutes", "steps"), strict=True):
            bleu = [r["bleu_cased"] for r in rs]
            ax.plot([r[x] for r in rs], bleu, "o-", color=color, label=label)
    axes[0].set(xlabel="training minutes (2 CPU cores)", ylabel="sacreBLEU, cased")
    axes[1].set(xlabel="step", ylabel="sacreBLEU, cased")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Multi30k en-de validation (1,014 sentences), configs/multi30k.py:cpu, beam 4")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(records: list[dict]) -> str:
    lines = [
        "| model | step | training minutes | BLEU cased | BLEU uncased |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        mark = " (final)" if r["final"] else ""
        lines.append(
            f"| {r['residual']} | {r['steps']}{mark} | {r['train_minutes']:.1f} | "
            f"{r['bleu_cased']:.2f} | {r['bleu_uncased']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default="runs/multi30k")
    p.add_argument("--variant", default="cpu", help=f"{CONFIG} variant")
    p.add_argument("--num_steps", type=int, default=0, help="Override train.num_steps.")
    p.add_argument("--bleu_every", type=int, default=500, help="Steps between scored checkpoints.")
    p.add_argument("--residuals", default=",".join(RESIDUALS))
    p.add_argument(
        "--curve",
        default=",".join(RESIDUALS),
        help="Residuals whose every kept checkpoint is scored; the others' last one only.",
    )
    p.add_argument("--train_files", default="", help="Override data.train_files (tests).")
    p.add_argument("--validation_files", default="", help="Override data.validation_files.")
    p.add_argument("--out", default="", help="JSON (default WORKDIR/multi30k.json)")
    p.add_argument("--markdown", default="", help="Markdown (default WORKDIR/multi30k.md)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Further config overrides (tests), e.g. model.d_model=32.",
    )
    args = p.parse_args(argv)
    args.residuals = [r.strip() for r in args.residuals.split(",") if r.strip()]
    if not args.residuals or any(r not in RESIDUALS for r in args.residuals):
        p.error(f"--residuals: {args.residuals} must be taken from {RESIDUALS}")
    if args.bleu_every < 1:
        p.error("--bleu_every must be at least 1")
    args.out = args.out or os.path.join(args.workdir, "multi30k.json")
    args.markdown = args.markdown or os.path.join(args.workdir, "multi30k.md")
    return args


def run_config(args: argparse.Namespace, residual: str):
    """The config of one run: the variant with the run's residual, then the command line's
    data files and `--set KEY=VALUE` overrides (VALUE as JSON, cast to the field's type)."""
    config = load_config(args.variant, residual, args.workdir, args.num_steps, args.bleu_every)
    if args.train_files:
        config.data.train_files = args.train_files
    if args.validation_files:
        config.data.validation_files = args.validation_files
    for item in args.set:
        key, _, value = item.partition("=")
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = type(node[leaf])(json.loads(value))
    return config


def record(args, residual: str, config, scores: dict, minutes: float, device: str) -> dict:
    """One scored checkpoint's record."""
    return {
        "config": f"{CONFIG}:{args.variant}",
        "residual": residual,
        "split": config.eval.split,
        "bleu_cased": scores["bleu_cased"],
        "bleu_uncased": scores["bleu_uncased"],
        "signature": scores["signature_cased"],
        "signature_uncased": scores["signature_uncased"],
        "train_minutes": round(minutes, 2),
        "steps": scores["step"],
        "final": scores["step"] == config.train.num_steps,
        "beam_size": scores["beam_size"],
        "alpha": scores["alpha"],
        "sentences": scores["sentences"],
        "decode_seconds": round(scores["decode_seconds"], 1),
        "device": device,
    }


def train_and_score(args: argparse.Namespace, residual: str, device: str) -> list[dict]:
    """Trains one residual's model (resuming its workdir), then scores its checkpoints (every
    kept one for the residuals of `--curve`, else the last); exits when training stopped
    before the last step."""
    config = run_config(args, residual)
    workdir = os.path.join(args.workdir, residual)
    print(f"== training the {residual} model in {workdir}", flush=True)
    print(f"   trained in {train(config, workdir):.1f} wall minutes", flush=True)
    # The vocabulary also where reformer.evaluate / reformer.translate look by default.
    if not os.path.exists(os.path.join(workdir, "vocab.model")):
        shutil.copy(config.data.vocab_path, os.path.join(workdir, "vocab.model"))
    minutes = train_minutes(workdir)
    stop_if_unfinished(residual, max(minutes), config.train.num_steps)
    print(f"== scoring the checkpoints of {workdir} on validation", flush=True)
    every = residual in args.curve.split(",")
    return [
        record(args, residual, config, s, minutes[s["step"]], device)
        for s in score_checkpoints(config, workdir, every=every)
    ]


def main(argv=None) -> None:
    args = parse_args(argv)

    from absl import logging

    from reformer.training import sharding

    logging.set_verbosity(logging.WARNING)
    device = sharding.device_name()
    records = []
    for residual in args.residuals:
        records += train_and_score(args, residual, device)
    write_results(
        records, args.out, args.markdown, markdown(records), lambda png: plot(records, png)
    )


if __name__ == "__main__":
    main()
