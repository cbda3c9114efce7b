"""How often LSH lets the duplication task's queries see the key they need, by hash rounds.

    python scripts/inspect_duplication.py --workdir runs/duplication \\
        --out docs/results/duplication_inspection.json \\
        --markdown docs/results/duplication_inspection.md

For the latest checkpoint of a `configs/duplication.py` model (`0 w 0 w`, one LSH layer) and
the held-out sequences of its evaluation (`eval.seed`; 256 by default), each evaluated with
1, 2, 4 and 8 hash rounds: the share of second-copy queries whose twin (the key holding the
first occurrence of the token they predict, |w| positions back since inputs are shifted
right) is among the keys some round lets them see, for some head and for the best head; the
mean weight the best head gives it; and the model's accuracy on the same sequences with the
same rotations (`reformer/inspection/duplication.py`). Every `--per_draw` sequences get a
new draw of rotations. Table 2's accuracies of the LSH-2 row (`--table2`, the CPU-scale
reproduction) are put beside.
"""

from __future__ import annotations

import argparse
import json
import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def held_out(config, n: int):
    """The first `n` evaluation sequences `[n, L]` (`data.make_eval_batches`)."""
    import numpy as np

    from reformer import data

    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.eval.num_batches = -(-n // config.eval.batch_size)
    return np.concatenate([b["tokens"] for b in data.make_eval_batches(config)])[:n]


def measure(args) -> tuple[list[dict], dict]:
    import jax

    from reformer.config import load_config_file
    from reformer.inspection.duplication import twin_stats, twin_summary
    from reformer.training import sharding
    from reformer.training.state import load_params, make_model

    config = load_config_file(os.path.join(REPO, args.config), args.variant)
    model = make_model(config)
    params, step = load_params(config, args.workdir, model, purpose="inspect")
    tokens = held_out(config, args.sequences)
    table2 = table2_accuracies(args.table2)
    records = []
    for n_hashes in args.hashes:
        start = time.time()
        stats = [
            twin_stats(
                model.cfg,
                params,
                tokens[i : i + args.per_draw],
                config.data.word_len,
                n_hashes,
                jax.random.fold_in(jax.random.key(args.seed), i),
            )
            for i in range(0, len(tokens), args.per_draw)
        ]
        record = {
            "n_hashes": n_hashes,
            **twin_summary(stats),
            "table2_lsh2_accuracy": table2.get(f"lsh{n_hashes}"),
            "train_n_hashes": model.cfg.n_hashes,
            "step": step,
            "word_len": config.data.word_len,
            "seq_len": config.data.seq_len,
            "rotation_draws": -(-len(tokens) // args.per_draw),
            "seconds": round(time.time() - start, 1),
            "device": sharding.device_name(),
        }
        print(json.dumps(record), flush=True)
        records.append(record)
    return records, draw_pictures(args, config, model.cfg, params, tokens, records)


def draw_pictures(args, config, cfg, params, tokens, records) -> dict:
    """Layer 0 of the first held-out sequence with `--picture_hashes` rounds and hash seed 0
    (as `python -m reformer.inspect --example 0` draws it), for the head that sees the twins
    most often: its buckets, its attention map over the second copy's queries and one query
    alone, written beside `--out`. Returns the paths, the head, the query and the rounds."""
    import numpy as np

    from reformer.inspection import pictures
    from reformer.inspection.report import inspect_layer

    record = next(r for r in records if r["n_hashes"] == args.picture_hashes)
    head = max(range(cfg.n_heads), key=lambda h: record["twin_seen_per_head"][h])
    w, length = config.data.word_len, config.data.seq_len
    arrays = inspect_layer(
        cfg,
        params,
        tokens[0],
        0,
        n_hashes=args.picture_hashes,
        heads=(head,),
        queries=(w + 2, length),
        keys=(0, length),
    )
    # The query drawn alone: one that gives its twin the most weight (nearest the middle).
    queries = arrays["queries"]
    twin_weight = arrays["weights"][0, np.arange(len(queries)), queries - w]
    best = max(range(len(queries)), key=lambda i: (round(twin_weight[i], 2), -abs(i - w // 2)))
    query = int(queries[best])
    figures = {
        "buckets": pictures.buckets_figure(arrays, head),
        "attention": pictures.attention_figure(arrays, 0, diagonal=w),
        f"query{query}": pictures.query_figure(arrays, 0, query, diagonal=w),
    }
    base = os.path.splitext(args.out)[0]
    paths = []
    for name, figure in figures.items():
        paths.append(f"{base}_head{head}_{name}.png")
        figure.savefig(paths[-1], format="png", dpi=110)
    return {"paths": paths, "head": head, "query": query, "n_hashes": args.picture_hashes}


def table2_accuracies(path: str) -> dict:
    """Table 2's LSH-2 row by evaluation column (`lsh8`...), from the reproduction's JSON."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r["eval"]: r["accuracy"] for r in json.load(f) if r["train"] == "lsh2"}


def markdown(records: list[dict], command: str, picture: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    r = records[0]
    w, length = r["word_len"], r["seq_len"]
    lines = [
        "# LSH attention on the duplication task: does a query see its twin?",
        "",
        f"The model (`configs/duplication.py`: one reversible LSH layer, 4 heads, trained with "
        f"{r['train_n_hashes']} hashes for {r['step']} steps) reads `0 w 0 w` (|w| = {w}, "
        f"length {length}). Position p predicts token p; in the second copy that token "
        f"repeats its twin, token p - {w + 1} of the first copy, which key p - {w} reads "
        "(inputs are shifted right by one). For each second-copy query: is the twin among the "
        "keys some hash round lets it see, for some head and for the head that sees it most "
        "often; the weight the best head gives it (mean over queries); and the model's "
        "accuracy with the same rotations. The last column is the LSH-2 row of Table 2 at "
        "CPU scale (`duplication_cpu.json`: another model trained with 2 hashes, evaluated "
        "with one rotation draw).",
        "",
        "| Hash rounds | Twin seen (some head) | Twin seen (best head) | Weight on twin "
        "(best head) | Accuracy | Table 2, LSH-2 row |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['n_hashes']} | {pct(r['twin_seen_any_head'])} | "
            f"{pct(max(r['twin_seen_per_head']))} | {r['twin_weight_best_head']:.3f} | "
            f"{pct(r['accuracy'])} | {pct(r['table2_lsh2_accuracy'])} |"
        )
    lines += [
        "",
        f"{r['sequences']} held-out sequences (`eval.seed`), {r['queries']:,} second-copy "
        f"queries; a new draw of rotations every {r['sequences'] // r['rotation_draws']} "
        f"sequences; device: {r['device']}.",
        "",
        f"```bash\n{command}\n```",
        "",
        f"Pictures: layer 0 on the first held-out sequence with {picture['n_hashes']} hash "
        f"rounds, head {picture['head']} (the one that sees the twins most often): "
        + ", ".join(f"[`{os.path.basename(p)}`]({os.path.basename(p)})" for p in picture["paths"])
        + ". The same pictures, with the other heads':",
        "",
        "```bash\npython -m reformer.inspect --config configs/duplication.py --workdir "
        f"runs/duplication --layer 0 --example 0 --n_hashes {picture['n_hashes']} --window "
        f"{w + 2}:{length} --key_window 0:{length} --query {picture['query']} --diagonal {w} "
        "--out runs/duplication_inspect\n```",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/duplication.py")
    p.add_argument("--variant", default="cpu", help="The config's variant (default: the Reformer).")
    p.add_argument("--workdir", default="runs/duplication")
    p.add_argument("--hashes", default="1,2,4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--sequences", type=int, default=256)
    p.add_argument("--per_draw", type=int, default=16, help="Sequences per draw of rotations.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--picture_hashes", type=int, default=2, help="Hash rounds of the pictures.")
    p.add_argument("--table2", default=os.path.join(REPO, "docs/results/duplication_cpu.json"))
    p.add_argument("--out", default="docs/results/duplication_inspection.json")
    p.add_argument("--markdown", default="docs/results/duplication_inspection.md")
    return p.parse_args(argv)


def main(argv=None) -> None:
    import sys

    from reformer.experiments.results import write_results

    args = parse_args(argv)
    records, picture = measure(args)
    words = sys.argv[1:] if argv is None else argv
    command = " ".join(["python scripts/inspect_duplication.py", *words])
    table = markdown(records, command, picture)
    note = f"; {', '.join(picture['paths'])}"
    write_results(records, args.out, args.markdown, table, note=note)


if __name__ == "__main__":
    main()
