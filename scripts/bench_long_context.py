"""XLA memory of the enwik8 model's train step from 64K to 1M tokens, float32 and bfloat16.

Nothing is run: each step is compiled and its `memory_analysis()` read (as
`scripts/bench_memory.py` does: `reformer.experiments.memory.step_memory`), so 1M tokens can
be measured on a CPU machine. The model is `configs/enwik8.py` (12 layers
`[local, local, lsh, local] x 3`, d_model 1024, batch 1) with its axial grid widened to
`(L / 512, 512)` and two LSH buckets per chunk (512 at 64K, as the config has, 8,192 at 1M).

    python scripts/bench_long_context.py --out docs/benchmarks/long_context_cpu.json

writes one record per point ({"seq_len", "dtype", "temp_bytes", "total_bytes",
"temp_bytes_per_token", "n_params", "compile_s", "device"}), a PNG beside it, and prints a
Markdown table. `--set model.dropout=0` (repeatable) changes a config field at every point.

    python scripts/bench_long_context.py --breakdown --lengths 32768

prints where the step's temporary memory goes instead, in units of one float32 `[L, d_model]`
activation: the forward pass alone, the gradient (no optimizer), the whole train step, and the
forward and backward pass (`jax.vjp`) of each kind of half-layer on its own, with the
half's input, cotangent and outputs counted apart (`--out` then gets these records).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reformer.experiments.memory import device_name, enwik8_config, step_memory

LENGTHS = (65_536, 131_072, 262_144, 524_288, 1_048_576)
DTYPES = ("float32", "bfloat16")


def long_config(seq_len: int, dtype: str, overrides=()):
    c = enwik8_config()
    for item in overrides:  # "model.dropout=0": config.model.dropout = 0.0
        field, value = item.split("=", 1)
        group, name = field.split(".")
        c[group][name] = type(c[group][name])(value)
    m = c.model
    c.train.batch_size, c.data.seq_len, m.max_len, m.dtype = 1, seq_len, seq_len, dtype
    m.axial_shape = (seq_len // 512, 512)
    m.n_buckets = 2 * seq_len // m.lsh_chunk_len
    return c


def breakdown(seq_len: int, dtype: str, overrides=()) -> list[dict]:
    """Temporary memory of the parts of one train step, in [L, d_model] float32 vectors."""
    import jax
    import jax.numpy as jnp

    from reformer.model.blocks import AttentionHalf, FeedForwardHalf
    from reformer.model.models import init_params
    from reformer.training.state import make_model

    config = long_config(seq_len, dtype, overrides)
    model = make_model(config)
    cfg = model.cfg
    vector = seq_len * cfg.d_model * 4
    key = jax.eval_shape(lambda: jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    weights = jax.ShapeDtypeStruct((1, seq_len), jnp.float32)
    params = jax.eval_shape(lambda k: init_params(model, k, 1, seq_len), key)

    def loss(p, t, w, r):
        rngs = {"dropout": r, "hash": r}
        return model.apply({"params": p}, t, deterministic=False, weights_BxL=w, rngs=rngs)[0]

    def temp(fn, *args) -> dict:
        m = jax.jit(fn).lower(*args).compile().memory_analysis()
        io = m.argument_size_in_bytes + m.output_size_in_bytes
        return {"temp_vectors": round(m.temp_size_in_bytes / vector, 2),
                "io_vectors": round(io / vector, 2)}  # fmt: skip

    parts = {
        "forward (loss)": temp(loss, params, tokens, weights, key),
        "gradient (no optimizer)": temp(jax.grad(loss), params, tokens, weights, key),
        "train step": {"temp_vectors": round(step_memory(config)["temp_bytes"] / vector, 2)},
    }
    x = jax.ShapeDtypeStruct((1, seq_len, cfg.d_model), jnp.float32)
    halves = {f"{kind} attention half": AttentionHalf(cfg, kind) for kind in
              dict.fromkeys(cfg.attention_types)}  # fmt: skip
    halves["feed-forward half"] = FeedForwardHalf(cfg)
    for name, half in halves.items():
        extra = () if isinstance(half, FeedForwardHalf) else (None,)
        p = jax.eval_shape(
            lambda k, h=half, e=extra: h.init({"params": k, "hash": k}, jnp.zeros(x.shape), *e,
                                              deterministic=True)["params"], key)  # fmt: skip

        def fwd_bwd(p, x, dy, r, h=half, e=extra):
            def f(p, x):
                out = h.apply({"params": p}, x, *e, deterministic=False,
                              rngs={"dropout": r, "hash": r})  # fmt: skip
                return out if isinstance(h, FeedForwardHalf) else out[0]

            out, vjp = jax.vjp(f, p, x)
            return out, vjp(dy)

        parts[f"{name}: forward + backward"] = temp(fwd_bwd, p, x, x, key)
    return [{"seq_len": seq_len, "dtype": dtype, "part": k, **v, "device": device_name(),
             "overrides": list(overrides)} for k, v in parts.items()]  # fmt: skip


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for dtype in DTYPES:
        rs = [r for r in records if r["dtype"] == dtype]
        ax.plot([r["seq_len"] for r in rs], [r["total_bytes"] / 2**30 for r in rs], "o-",
                label=f"{dtype}, total")  # fmt: skip
    ax.axhline(75, color="gray", ls="--", lw=1, label="75 GiB (target at 1M, bfloat16)")
    ax.plot([65_536], [6], "k_", ms=14, mew=1.5, label="6 GiB (target at 64K, float32)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("tokens per sequence (batch 1)")
    ax.set_ylabel("XLA memory of one train step (GiB)")
    ax.set_title(f"configs/enwik8.py train step ({records[0]['device']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--out", default="docs/benchmarks/long_context_cpu.json")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override, e.g. model.dropout=0"
    )
    parser.add_argument("--breakdown", action="store_true", help="memory of the step's parts")
    args = parser.parse_args()
    if args.breakdown:
        records = []
        for dtype in args.dtypes.split(","):
            for seq_len in map(int, args.lengths.split(",")):
                records += breakdown(seq_len, dtype, args.set)
        print("| tokens | dtype | part | temporaries ([L, d_model] f32) | inputs + outputs |")
        print("|---|---|---|---|---|")
        for r in records:
            print(f"| {r['seq_len']:,} | {r['dtype']} | {r['part']} | {r['temp_vectors']} | "
                  f"{r.get('io_vectors', '-')} |")  # fmt: skip
        if args.out != parser.get_default("out"):
            Path(args.out).write_text(json.dumps(records, indent=1) + "\n")
        return
    records = []
    for dtype in args.dtypes.split(","):
        for seq_len in map(int, args.lengths.split(",")):
            config = long_config(seq_len, dtype, args.set)
            r = {"seq_len": seq_len, "dtype": dtype, **step_memory(config)}
            r["overrides"] = args.set
            r["temp_bytes_per_token"] = r["temp_bytes"] / seq_len
            r["device"] = device_name()
            records.append(r)
            print(json.dumps(r), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    plot(records, out.with_suffix(".png"))
    print("| tokens | dtype | temp GiB | total GiB | temp KiB per token |")
    print("|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['seq_len']:,} | {r['dtype']} | {r['temp_bytes'] / 2**30:.2f} | "
            f"{r['total_bytes'] / 2**30:.2f} | {r['temp_bytes_per_token'] / 1024:.0f} |"
        )


if __name__ == "__main__":
    main()
