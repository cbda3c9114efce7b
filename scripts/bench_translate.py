"""Translation throughput of a trained model: sentences per second, greedy and beam 4.

    python scripts/bench_translate.py --config configs/multi30k.py:cpu --workdir W \\
        --out docs/benchmarks/translate_cpu.json

Translates the first `--sentences` sources of the config's validation split with
`reformer.translate.translate` (the path `reformer.translate` and `reformer.evaluate` take:
sources sorted by length and padded to the training buckets, decoding through the caches,
stopping when every row has ended), greedy (`beam_size=1`) and with 4 beams (alpha 0.6), in
batches of 64 sentences and one at a time (`--batch1_sentences` of them). One untimed run
compiles every shape met; the median of `--repeats` timed runs is reported. Records:
{"mode", "beam_size", "batch_size", "sentences", "seconds", "sentences_per_sec",
"target_tokens_per_sec" (subwords of the outputs, end id included), "step", "device"}. Writes
the JSON, a PNG beside it, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = [f"{r['mode']}\nbatch {r['batch_size']}" for r in records]
    bars = ax.bar(labels, [r["sentences_per_sec"] for r in records], color="C0")
    ax.bar_label(bars, fmt="%.1f")
    ax.set(ylabel="sentences per second", title=f"Translation throughput ({records[0]['device']})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write(records: list[dict], out: str) -> None:
    """The records as JSON at `out`, a PNG beside it, and a Markdown table on stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(records, f, indent=1)
    png = os.path.splitext(out)[0] + ".png"
    plot(records, png)
    print("| mode | batch | sentences | sentences/s | output subwords/s |")
    print("|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['mode']} | {r['batch_size']} | {r['sentences']} | "
            f"{r['sentences_per_sec']:.1f} | {r['target_tokens_per_sec']:.0f} |"
        )
    print(f"Wrote {out} and {png}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/multi30k.py:cpu")
    p.add_argument("--workdir", required=True, help="A trained translation workdir.")
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--batch1_sentences", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="docs/benchmarks/translate_cpu.json")
    args = p.parse_args(argv)

    import jax
    from absl import logging

    from reformer.config import load_config_file
    from reformer.data import translation
    from reformer.evaluation.translation import translate
    from reformer.training import sharding
    from reformer.training.state import load_params, make_model

    logging.set_verbosity(logging.WARNING)
    path, _, variant = args.config.partition(":")
    config = load_config_file(path, variant or None)
    tokenizer = translation.vocabulary(config, args.workdir)
    model = make_model(config)
    params, step = load_params(config, args.workdir, model)
    params = jax.device_get(params)
    text, _ = translation.load_split(config, "validation", tokenizer)
    records = []
    for mode, beam_size in (("greedy", 1), ("beam 4", 4)):
        for batch_size, n in ((64, args.sentences), (1, args.batch1_sentences)):
            sentences = text.sources[:n]

            def run(sentences=sentences, beam_size=beam_size, batch_size=batch_size):
                start = time.perf_counter()
                out = translate(
                    config,
                    model.cfg,
                    params,
                    tokenizer,
                    sentences,
                    beam_size=beam_size,
                    batch_size=batch_size,
                    progress_every=1e9,
                )
                return time.perf_counter() - start, out

            run()  # Compiles every shape met.
            times, outputs = zip(*(run() for _ in range(args.repeats)), strict=True)
            seconds = statistics.median(times)
            tokens = sum(len(tokenizer.encode(o)) + 1 for o in outputs[0])
            records.append(
                {
                    "mode": mode,
                    "beam_size": beam_size,
                    "batch_size": batch_size,
                    "sentences": len(sentences),
                    "seconds": seconds,
                    "sentences_per_sec": len(sentences) / seconds,
                    "target_tokens_per_sec": tokens / seconds,
                    "step": step,
                    "device": sharding.device_name(),
                }
            )
            print(
                f"{mode}, batch {batch_size}: {len(sentences) / seconds:.1f} sentences/s "
                f"({tokens / seconds:.0f} output subwords/s)",
                flush=True,
            )
    write(records, args.out)


if __name__ == "__main__":
    main()
