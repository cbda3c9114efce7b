"""Image lengths: the train step of LSH against full attention at 3,072 sub-pixels (32x32
CIFAR images) and 12,288 (64x64, imagenet64), its memory from XLA and its time on this
machine; and the memory of the authors' imagenet64 model (`configs/imagenet64.py`) in
float32 and bfloat16.

    python scripts/bench_images.py --out docs/benchmarks/images_cpu.json

Two sweeps, one JSON record per point ({"sweep", "model", "attention", "seq_len", "dtype",
"batch", "temp_bytes", "total_bytes", "n_params", "step_seconds" (median of --repeats timed
steps after a compiling one; `null` where not run), "device"}), a PNG beside the JSON and a
Markdown table on stdout:

- `speed`: the `configs/cifar10.py:cpu` model (4 reversible layers, d_model 128) at each
  image length with every layer LSH (as trained) or full attention, batch 1, run;
- `imagenet64`: the authors' model (6 layers, d_model 1024, LSH chunk 128, 192 buckets,
  2 hashes) at 12,288 tokens, batch 1, float32 and bfloat16 products, compiled only
  (`--time_imagenet64` runs it too).
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import numpy as np

from reformer.config import load_config_file
from reformer.experiments.memory import CONFIGS, device_name, step_memory
from reformer.experiments.timing import median_seconds

SHAPES = {3072: (32, 32, 3), 12288: (64, 64, 3)}


def cifar_model(seq_len: int, attention: str):
    """`configs/cifar10.py:cpu` at `seq_len` sub-pixels with `attention` in every layer."""
    c = load_config_file(str(CONFIGS / "cifar10.py"), "cpu")
    shape = SHAPES[seq_len]
    c.data.image_shape, c.data.seq_len, c.model.max_len = shape, seq_len, seq_len
    c.model.axial_shape = shape
    c.model.attention_types = (attention,)
    c.model.n_buckets = 2 * seq_len // c.model.lsh_chunk_len
    c.train.batch_size = 1
    return c


def imagenet64_model(dtype: str, attention: str):
    c = load_config_file(str(CONFIGS / "imagenet64.py"))
    c.model.dtype, c.model.attention_types = dtype, (attention,)
    c.train.batch_size = 1
    return c


def step_seconds(config, repeats: int) -> float:
    """Median seconds of one train step of `config` (random sub-pixels), after compiling."""
    import jax

    from reformer.training.optimizer import make_optimizer, make_schedule
    from reformer.training.state import make_init_state, make_model
    from reformer.training.steps import train_step

    model, tx = make_model(config), make_optimizer(config.optimizer)
    state = jax.jit(make_init_state(config, model, tx))(jax.random.key(0))
    shape = (config.train.batch_size, config.data.seq_len)
    tokens = np.random.default_rng(0).integers(0, 256, shape, dtype=np.int32)
    batch = {"tokens": tokens, "weights": np.ones(shape, np.float32)}
    step = jax.jit(
        functools.partial(train_step, model=model, tx=tx, schedule=make_schedule(config.optimizer))
    )

    def run(s):
        new_state, metrics = step(s, batch, jax.random.key(1))
        jax.block_until_ready(metrics)
        return new_state

    return median_seconds(run, state, repeats=repeats)


def point(sweep: str, model: str, config, run: bool, repeats: int) -> dict:
    record = {
        "sweep": sweep,
        "model": model,
        "attention": config.model.attention_types[0],
        "seq_len": config.data.seq_len,
        "dtype": config.model.dtype,
        "batch": config.train.batch_size,
        **step_memory(config),
        "step_seconds": step_seconds(config, repeats) if run else None,
        "device": device_name(),
    }
    print(json.dumps(record), flush=True)
    return record


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = [r for r in records if r["sweep"] == "speed"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for attention, color in (("lsh", "tab:blue"), ("full", "tab:orange")):
        rs = sorted((r for r in speed if r["attention"] == attention), key=lambda r: r["seq_len"])
        lengths = [r["seq_len"] for r in rs]
        axes[0].plot(lengths, [r["step_seconds"] for r in rs], "o-", color=color, label=attention)
        axes[1].plot(lengths, [r["total_bytes"] / 2**20 for r in rs], "o-", color=color)
    axes[0].set(title="train step, batch 1", xlabel="sub-pixels", ylabel="seconds")
    axes[1].set(title="step memory (XLA)", xlabel="sub-pixels", ylabel="MiB")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(SHAPES), [str(n) for n in sorted(SHAPES)])
    axes[0].legend()
    fig.suptitle(f"configs/cifar10.py:cpu model, LSH against full attention ({device_name()})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--time_imagenet64", action="store_true")
    p.add_argument("--out", default=None, help="JSON file (PNG beside it)")
    args = p.parse_args(argv)
    records = [
        point("speed", "cifar10:cpu", cifar_model(n, a), True, args.repeats)
        for n in sorted(SHAPES)
        for a in ("lsh", "full")
    ]
    records += [
        point("imagenet64", "imagenet64", imagenet64_model(d, a), args.time_imagenet64, 1)
        for d in ("float32", "bfloat16")
        for a in ("lsh", "full")
    ]
    print("| sweep | attention | sub-pixels | dtype | step s | step memory MiB |")
    print("|---|---|---|---|---|---|")
    for r in records:
        seconds = "-" if r["step_seconds"] is None else f"{r['step_seconds']:.2f}"
        print(
            f"| {r['model']} | {r['attention']} | {r['seq_len']:,} | {r['dtype']} | {seconds} "
            f"| {r['total_bytes'] / 2**20:,.0f} |"
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)
        png = os.path.splitext(args.out)[0] + ".png"
        plot(records, png)
        print(f"Wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
