"""Reproduces the paper's Table 2: the duplication task trained with full attention and with
LSH-1/2/4, each evaluated with full attention and with 8, 4, 2 and 1 hashes.

    python scripts/reproduce_duplication.py --scale cpu --workdir runs/table2
    python scripts/reproduce_duplication.py --scale paper --workdir runs/table2_paper

Each row is one training run through the normal trainer (`configs/duplication.py:full`, or
`:paper` at paper scale, with the row's attention; one workdir per row, so an interrupted
reproduction resumes); each cell evaluates that row's latest checkpoint with
`reformer.evaluate`. "Full" is full attention with the LSH
layer's shared query-key projection (`full_shared_qk`), so every row can be evaluated in
every column with the same weights; the full-attention row is trained with it.

Writes `--out` (JSON, one record per cell: train, eval, accuracy, steps, seq_len, device)
and `--markdown` (the table in the paper's shape). `--rows` trains a subset; `--merge`
builds the JSON and table from the JSON files of earlier runs (e.g. rows run in parallel).
"""

from __future__ import annotations

import argparse
import copy
import json
import os

from reformer.experiments.results import write_results
from reformer.experiments.runs import train_and_load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS = ("full", "lsh4", "lsh2", "lsh1")  # The paper's row order.
COLUMNS = ("full", "lsh8", "lsh4", "lsh2", "lsh1")  # The paper's column order.
LABELS = {"full": "Full attention", "lsh1": "LSH-1", "lsh2": "LSH-2", "lsh4": "LSH-4"}
COLUMN_LABELS = {"full": "Full", "lsh8": "LSH-8", "lsh4": "LSH-4", "lsh2": "LSH-2", "lsh1": "LSH-1"}
PAPER = {  # Kitaev et al. 2020, Table 2 (accuracy, %).
    "full": {"full": 100.0, "lsh8": 94.8, "lsh4": 92.5, "lsh2": 76.9, "lsh1": 52.5},
    "lsh4": {"full": 0.8, "lsh8": 100.0, "lsh4": 99.9, "lsh2": 99.4, "lsh1": 91.9},
    "lsh2": {"full": 0.8, "lsh8": 100.0, "lsh4": 99.9, "lsh2": 98.1, "lsh1": 86.8},
    "lsh1": {"full": 0.8, "lsh8": 99.9, "lsh4": 99.6, "lsh2": 94.8, "lsh1": 77.9},
}
SCALES = ("toy", "cpu", "paper")


def base_config(scale: str):
    """configs/duplication.py at this scale; "toy" is a seconds-long smoke test."""
    from reformer.config import load_config_file

    path = os.path.join(REPO, "configs", "duplication.py")
    c = load_config_file(path, "paper" if scale == "paper" else "full")
    if scale == "toy":
        c.model.vocab_size = 16
        c.model.d_model = c.model.d_ff = 32
        c.model.n_heads, c.model.d_head = 2, 16
        c.model.max_len = 32
        c.model.lsh_chunk_len = 4
        c.data.word_len, c.data.seq_len = 7, 16
        c.train.num_steps = 4
        c.train.batch_size = 4
        c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 2
        c.optimizer.warmup_steps = 2
        c.eval.num_batches, c.eval.batch_size = 1, 4
    return c


def hashes(name: str) -> int:
    return int(name.removeprefix("lsh"))


def row_config(base, row: str, num_steps: int | None):
    c = copy.deepcopy(base)
    if row == "full":
        c.model.attention_types = ("full_shared_qk",)
    else:
        c.model.attention_types = ("lsh",)
        c.model.n_hashes = hashes(row)
    if num_steps:
        c.train.num_steps = num_steps
    return c


def column_config(train_config, column: str):
    c = copy.deepcopy(train_config)
    if column == "full":
        c.eval.attention_types = ("full_shared_qk",)
        c.eval.n_hashes = 0
    else:
        c.eval.attention_types = ("lsh",)
        c.eval.n_hashes = hashes(column)
    return c


def run_rows(args) -> list[dict]:
    from reformer.training import sharding

    device = sharding.device_name()

    base = base_config(args.scale)
    records = []
    for row in args.rows:
        config = row_config(base, row, args.num_steps)
        workdir = os.path.join(args.workdir, row)
        print(f"== training {LABELS[row]} in {workdir}", flush=True)
        run = train_and_load(config, workdir, row)
        for column in COLUMNS:
            r = run.score(column_config(config, column))
            print(f"   eval {COLUMN_LABELS[column]:>5}: accuracy {r['accuracy']:.4f}", flush=True)
            records.append(
                {
                    "train": row,
                    "eval": column,
                    "accuracy": r["accuracy"],
                    "steps": r["step"],
                    "seq_len": config.data.seq_len,
                    "word_len": config.data.word_len,
                    "eval_tokens": r["tokens"],
                    "train_minutes": round(run.minutes, 2),
                    "scale": args.scale,
                    "device": device,
                }
            )
    return records


def markdown(records: list[dict]) -> str:
    cells = {(r["train"], r["eval"]): r for r in records}
    rows = [row for row in ROWS if any((row, c) in cells for c in COLUMNS)]
    header = "| Train \\ Eval | " + " | ".join(COLUMN_LABELS[c] for c in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    for row in rows:
        values = []
        for c in COLUMNS:
            r = cells.get((row, c))
            values.append(f"{100 * r['accuracy']:.1f}%" if r else "-")
        lines.append(f"| {LABELS[row]} | " + " | ".join(values) + " |")
    any_record = next(iter(records))
    steps = ", ".join(f"{LABELS[row]} {cells[(row, COLUMNS[0])]['steps']}" for row in rows)
    lines.append("")
    lines.append(
        f"Accuracy on the second copy of w; length {any_record['seq_len']} "
        f"(|w| = {any_record['word_len']}); steps: {steps}; device: {any_record['device']}."
    )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", choices=SCALES, default="cpu")
    p.add_argument("--workdir", default="runs/table2", help="One sub-directory per row.")
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"Comma-separated rows to train, of {ROWS} (default: all).",
    )
    p.add_argument("--num_steps", type=int, default=0, help="Override train.num_steps.")
    p.add_argument("--out", default="", help="JSON output (default: WORKDIR/table2.json).")
    p.add_argument("--markdown", default="", help="Markdown output (default: WORKDIR/table2.md).")
    p.add_argument("--merge", nargs="+", default=None, help="Build outputs from these JSONs.")
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad or not rows:
        p.error(f"--rows: {bad or 'empty'} not in the allowed rows {ROWS}")
    args.rows = rows
    if args.num_steps < 0:
        p.error(f"--num_steps: must be >= 0, got {args.num_steps}")
    args.out = args.out or os.path.join(args.workdir, "table2.json")
    args.markdown = args.markdown or os.path.join(args.workdir, "table2.md")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.merge:
        records = []
        for path in args.merge:
            with open(path) as f:
                records.extend(json.load(f))
    else:
        from absl import logging

        logging.set_verbosity(logging.WARNING)
        records = run_rows(args)
    write_results(records, args.out, args.markdown, markdown(records))


if __name__ == "__main__":
    main()
