"""Decoding speed: cached (`reformer.decoding.sampling.generate`'s loop) against uncached
decoding (the whole model re-run for every new token), against the context length.

Two causal byte-level models of the `configs/enwik8.py:cpu` shape (d_model 128, 4 layers, 4
heads of 32, local chunk 128, LSH chunk 64 with 2 hashes, buckets for the longest context):
"local+lsh" alternates local and LSH layers, "local" has local layers only. Batch 1, greedy,
random weights (speed does not depend on them). At each context C:

- cached: the prompt (C - 64 tokens) is prefilled, then the loop that draws 64 tokens (63
  cached steps, positions C - 63 .. C - 1) is timed; tokens/s = 63 / time;
- uncached: `decode.generate_uncached` draws 2 tokens at positions C - 2, C - 1, each one a
  forward pass over a C-position buffer; tokens/s = 2 / time.

Times are medians over `--repeats` rounds after a warm-up run, taken round-robin over the
points.

    python scripts/bench_decode.py --out docs/benchmarks/decode_cpu.json

writes one record per point, {"context", "mode", "tokens_per_sec", "ms_per_token",
"attention_types", "n_hashes", "n_buckets", "batch", "device"}, a PNG next to it, and prints
a Markdown table and the targets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from reformer.decoding import cache as decoding_cache
from reformer.decoding import sampling as decode
from reformer.model.model_config import ModelConfig
from reformer.model.models import ReformerLM, init_params
from reformer.training import sharding

GENERATED = 64  # tokens drawn per timed cached run
UNCACHED_TOKENS = 2  # tokens drawn per timed uncached run
GREEDY = decode.Sampling(temperature=0.0)


def model_config(types: tuple[str, ...], max_context: int) -> ModelConfig:
    side = 1 << (max(max_context, 256).bit_length() // 2)
    return ModelConfig(
        vocab_size=258,
        d_model=128,
        d_ff=512,
        n_heads=4,
        d_head=32,
        n_layers=4,
        attention_types=types,
        lsh_chunk_len=64,
        local_chunk_len=128,
        n_buckets=0,  # automatic at max_len: two buckets per chunk of the longest context
        n_hashes=2,
        causal=True,
        residual="reversible",
        position_chunk_size=0,
        positional="axial",
        max_len=max_context,
        axial_shape=(side, -(-max_context // side)),
        axial_dims=(64, 64),
        dropout=0.0,
        attention_dropout=0.0,
        dtype="float32",
    )


def cached_runner(cfg: ModelConfig, params, context: int):
    """A function that runs the timed part of a cached decode at `context`."""
    prompt = jax.random.randint(jax.random.key(1), (1, context - GENERATED), 2, 258)
    logits, caches = decode.prefill(
        cfg, params, prompt, jax.random.key(2), total=context, n_hashes=cfg.n_hashes
    )
    start = jnp.int32(context - GENERATED)

    def run():
        return decode.sample_loop(
            cfg,
            params,
            logits,
            caches,
            start,
            jax.random.key(3),
            length=GENERATED,
            sampling=GREEDY,
            end_token=None,
        )[0]

    return run, GENERATED - 1


def uncached_runner(cfg: ModelConfig, params, context: int):
    prompt = jax.random.randint(jax.random.key(1), (1, context - UNCACHED_TOKENS), 2, 258)

    def run():
        return decode.generate_uncached(
            cfg, params, prompt, UNCACHED_TOKENS, jax.random.key(3), GREEDY, end_token=None
        )

    return run, UNCACHED_TOKENS


def _time(run) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def measure(contexts: list[int], models: dict[str, tuple], repeats: int, device: str):
    points = []
    for name, types in models.items():
        cfg = model_config(types, max(contexts))
        params = init_params(ReformerLM(cfg), jax.random.key(0), 1, 256)
        for context in contexts:
            for mode, make in (("cached", cached_runner), ("uncached", uncached_runner)):
                run, tokens = make(cfg, params, context)
                first = _time(run)  # compiles
                points.append(
                    dict(
                        name=name,
                        cfg=cfg,
                        context=context,
                        mode=mode,
                        run=run,
                        tokens=tokens,
                        times=[],
                    )
                )
                print(f"{name} {mode} {context}: first run {first:.2f} s", flush=True)
    for round_ in range(repeats):
        for p in points:
            p["times"].append(_time(p["run"]))
        print(f"timed round {round_ + 1}/{repeats}", flush=True)
    records = []
    for p in points:
        seconds = statistics.median(p["times"])
        records.append(
            dict(
                context=p["context"],
                mode=p["mode"],
                tokens_per_sec=p["tokens"] / seconds,
                ms_per_token=1e3 * seconds / p["tokens"],
                attention_types=list(p["cfg"].attention_types),
                n_layers=p["cfg"].n_layers,
                d_model=p["cfg"].d_model,
                n_hashes=p["cfg"].n_hashes,
                n_buckets=decoding_cache.lsh_n_buckets(p["cfg"]),
                batch=1,
                device=device,
            )
        )
    return records


def _label(r: dict) -> str:
    return f"{'+'.join(dict.fromkeys(r['attention_types']))}, {r['mode']}"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for label in dict.fromkeys(_label(r) for r in records):
        points = [r for r in records if _label(r) == label]
        ax.plot(
            [r["context"] for r in points],
            [r["ms_per_token"] for r in points],
            marker="o",
            linestyle="--" if "uncached" in label else "-",
            label=label,
        )
    contexts = sorted({r["context"] for r in records})
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="context length (tokens)",
        ylabel="ms per generated token",
        title=f"Decoding one token, batch 1 ({records[0]['device']})",
    )
    ax.xaxis.set_major_locator(FixedLocator(contexts))
    ax.set_xticklabels([f"{c // 1024}K" for c in contexts])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_table(records: list[dict]) -> str:
    contexts = sorted({r["context"] for r in records})
    labels = list(dict.fromkeys(_label(r) for r in records))
    by_key = {(_label(r), r["context"]): r for r in records}
    lines = [
        "| tokens/s | " + " | ".join(f"{c:,}" for c in contexts) + " |",
        "|---" * (len(contexts) + 1) + "|",
    ]
    for label in labels:
        cells = [f"{by_key[(label, c)]['tokens_per_sec']:,.1f}" for c in contexts]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(records: list[dict]) -> list[str]:
    def speed(types, mode, context):
        for r in records:
            if r["attention_types"] == types and r["mode"] == mode and r["context"] == context:
                return r["tokens_per_sec"]
        return None

    contexts = sorted({r["context"] for r in records})
    lines = []
    low, high = contexts[0], contexts[-1]
    local_low, local_high = speed(["local"], "cached", low), speed(["local"], "cached", high)
    if local_low and local_high:
        ratio = local_low / local_high
        lines.append(
            f"local, cached: time per token at {high:,} is {ratio:.2f}x that at {low:,} "
            f"(target: roughly flat, within 1.5x): {'met' if ratio <= 1.5 else 'not met'}"
        )
    mixed = ["local", "lsh"]
    if 8192 in contexts:
        gain = speed(mixed, "cached", 8192) / speed(mixed, "uncached", 8192)
        lines.append(
            f"local+lsh at 8,192: cached {gain:.0f}x faster than uncached (target: at least 50x): "
            f"{'met' if gain >= 50 else 'not met'}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", default="1024,2048,4096,8192,16384")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="docs/benchmarks/decode_cpu.json")
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",") if c]
    if min(contexts) <= GENERATED:
        parser.error(f"--contexts: every context must be larger than {GENERATED}")
    models = {"local+lsh": ("local", "lsh"), "local": ("local",)}
    records = measure(contexts, models, args.repeats, sharding.device_name())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    plot(records, out.with_suffix(".png"))
    print(markdown_table(records))
    print("\n".join(targets(records)))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
