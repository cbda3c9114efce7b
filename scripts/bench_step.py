"""Whole train step speed against sequence length at a fixed number of tokens per step.

The paper's Figure 5 (right) for the whole model instead of one attention layer: every
point runs the same number of tokens per step (batch = tokens / length), so a step whose
cost is linear in the length takes the same time per token at every length. Four models:
LSH or full attention, reversible or not. Each step is `reformer.training.steps.jit_train_step`, as
the trainer runs it (forward, backward, Adam update; state donated), timed as the median of
`--repeats` steps after one warm-up step.

    python scripts/bench_step.py --out docs/benchmarks/step_cpu.json              # CPU sweep
    python scripts/bench_step.py --scale enwik8 --out docs/benchmarks/step_h100.json  # GPU

Model FLOPs utilization (MFU) is the model's useful FLOPs per step over the step time over
the device's peak rate. Useful FLOPs are counted analytically, as three times the forward
pass (the backward pass costs twice the forward), 2 FLOPs per multiply-add:
- every matrix product with a weight (attention projections, feed-forward, output layer):
  2 x tokens x fan_in x fan_out;
- attention: 4 x tokens x keys_per_query x d_head per head (q k^T and probs v), where
  keys_per_query is, for full attention, L when not causal and, when causal, the keys up to
  the end of each block of `reformer.attention.lsh.CAUSAL_BLOCK_LEN` query rows (what the blocked
  kernel computes: about (L + block) / 2),
  2 x chunk_len x n_hashes for LSH (a chunk and the one before it) and 2 x
  chunk_len for local attention; the LSH hash projection 2 x tokens x d_head x
  n_hashes x n_buckets / 2 (sum(bucket_factors) / 2 with factorized buckets).
Reversible layers recompute each layer's forward pass in the backward pass: that work is
not counted as useful (so MFU favours the plain stack). (XLA's `cost_analysis()` is not used:
it counts the body of the scan over layers once.) The peak is, on a GPU, the
vendor's dense rate for the step's dtype (H100/H200 SXM: 989 TFLOP/s bfloat16, 494 TFLOP/s
TF32 for float32), on a CPU the rate of one large float32 matrix product measured in the
same process (there is no vendor figure; the small batched products of chunked attention run
far below it).

Records (one per point): {"seq_len", "batch", "attention_types", "reversible", "dtype",
"step_seconds", "tokens_per_sec", "seconds_per_mtok", "model_flops", "mfu",
"peak_flops", "peak_source", "temp_bytes", "device", ...}; a PNG beside the JSON.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from reformer.attention.hashing import default_n_buckets
from reformer.attention.lsh import CAUSAL_BLOCK_LEN
from reformer.config import default_config, load_config_file, validate
from reformer.training import sharding
from reformer.training.optimizer import make_optimizer
from reformer.training.state import abstract_state, make_init_state, make_model
from reformer.training.steps import jit_train_step

REPO = Path(__file__).resolve().parent.parent

# Dense peak rates in FLOP/s of the NVIDIA data-center parts (SXM), per dtype of the step.
GPU_PEAKS = {
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}

VARIANTS = {  # name: (attention_types, reversible)
    "lsh_reversible": (("lsh",), True),
    "lsh_plain": (("lsh",), False),
    "lsh_factorized_reversible": (("lsh",), True),  # Factorized buckets (`bucket_factors`).
    "full_reversible": (("full",), True),
    "full_plain": (("full",), False),
}


def two_factors(n_buckets: int) -> tuple[int, int]:
    """n_buckets (a power of two) as two powers of two near its square root, as HF factorizes
    automatic bucket counts: hashing costs (f1 + f2) / 2 rotations instead of n_buckets / 2."""
    power = n_buckets.bit_length() - 1
    if n_buckets != 2**power:
        raise ValueError(f"factorized variants need a power-of-two bucket count, got {n_buckets}")
    return 2 ** (power // 2), 2 ** (power - power // 2)


def make_config(
    args, seq_len: int, attention: tuple, reversible: bool, dtype: str, factorized: bool = False
):
    if args.scale == "enwik8":
        c = load_config_file(str(REPO / "configs/enwik8.py"))
        m = c.model
        m.attention_types = attention if attention != ("lsh",) else m.attention_types
        m.axial_shape = (seq_len // 512, 512) if seq_len >= 1024 else (seq_len // 32, 32)
    else:
        c = default_config()
        m = c.model
        m.vocab_size, m.d_model, m.d_ff = 258, args.d_model, args.d_ff
        m.n_heads, m.d_head, m.n_layers = args.n_heads, args.d_head, args.n_layers
        m.attention_types = attention
        m.lsh_chunk_len, m.n_hashes = args.chunk, args.n_hashes
        m.positional = "none"
        m.position_chunk_size = 0
        c.data.name = "enwik8"
    m.dtype, m.max_len, m.causal = dtype, seq_len, True
    m.residual = "reversible" if reversible else "two_stream"
    # Two buckets per chunk at every length: at the enwik8 scale what configs/enwik8.py has at
    # 64K (512) and its :1m variant at 1M (8,192).
    m.n_buckets = default_n_buckets(seq_len, m.lsh_chunk_len)
    if factorized:
        m.bucket_factors = two_factors(m.n_buckets)
    m.dropout = m.attention_dropout = 0.0
    c.data.seq_len = seq_len
    c.train.batch_size = max(1, args.tokens // seq_len)
    c.optimizer.name = "adam"
    for item in getattr(args, "set", ()):  # "model.position_chunk_size=2048", "model.dropout=0.1"
        field, value = item.split("=", 1)
        group, name = field.split(".")
        c[group][name] = ast.literal_eval(value)
    validate(c, num_devices=jax.device_count())
    return c


def model_flops(c, n_params_matmul: int) -> float:
    """Useful FLOPs of one train step (3 x forward; see the module docstring)."""
    m = c.model
    tokens = c.train.batch_size * c.data.seq_len
    fwd = 2.0 * tokens * n_params_matmul
    for i in range(m.n_layers):
        kind = m.attention_types[i % len(m.attention_types)]
        if kind == "full":
            keys = full_keys_per_query(c.data.seq_len, m.causal)
        elif kind == "lsh":
            keys = 2 * m.lsh_chunk_len * m.n_hashes
            width = sum(m.bucket_factors) if m.bucket_factors else m.n_buckets
            fwd += 2.0 * tokens * m.n_heads * m.d_head * m.n_hashes * width / 2
        else:
            keys = 2 * m.local_chunk_len
        fwd += 4.0 * tokens * keys * m.d_head * m.n_heads
    return 3.0 * fwd


def full_keys_per_query(seq_len: int, causal: bool) -> float:
    """Mean keys per query that full attention computes: all L, or with the causal blocked
    kernel, the keys up to the end of each query block."""
    block = CAUSAL_BLOCK_LEN
    if not causal or block >= seq_len:
        return float(seq_len)
    starts = range(0, seq_len, block)
    return sum(min(block, seq_len - s) * min(s + block, seq_len) for s in starts) / seq_len


def matmul_param_count(params) -> int:
    """Parameters that multiply activations (kernels of Dense layers), not embeddings,
    positions, biases or norms."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    n = 0
    for path, leaf in flat:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith("kernel"):
            n += int(leaf.size)
    return n


def device_label() -> str:
    d = jax.devices()[0]
    return "cpu" if d.platform == "cpu" else d.device_kind


@functools.cache
def peak_flops(dtype: str) -> tuple[float, str]:
    d = jax.devices()[0]
    if d.platform == "gpu":
        for name, peaks in GPU_PEAKS.items():
            if name in d.device_kind:
                return peaks[dtype], f"{name} SXM dense {dtype} (vendor)"
    n = 4096
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / min(times), f"measured: one {n}x{n} float32 matmul, best of 5"


def run_point(args, seq_len: int, variant: str, dtype: str) -> dict:
    attention, reversible = VARIANTS[variant]
    c = make_config(args, seq_len, attention, reversible, dtype, "factorized" in variant)
    mesh = sharding.make_mesh(c.mesh)
    model = make_model(c)
    tx = make_optimizer(c.optimizer)
    abstract = abstract_state(c, model, tx, mesh)
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
    init_rng, step_rng = jax.random.split(jax.random.key(0))
    step = jit_train_step(c, model, tx, mesh, state_sharding)
    rng = np.random.default_rng(0)
    shape = (c.train.batch_size, seq_len)
    batch = {
        "tokens": rng.integers(0, c.model.vocab_size, shape, dtype=np.int32),
        "weights": np.ones(shape, np.float32),
    }
    batch = sharding.global_batch(mesh, batch)
    t0 = time.time()
    compiled = step.lower(abstract, batch, step_rng).compile()
    compile_s = time.time() - t0
    mem = compiled.memory_analysis()
    record = {
        "seq_len": seq_len,
        "batch": c.train.batch_size,
        "tokens_per_step": c.train.batch_size * seq_len,
        "variant": variant,
        "attention_types": list(c.model.attention_types),
        "reversible": reversible,
        "dtype": dtype,
        "temp_bytes": int(mem.temp_size_in_bytes),
        "compile_s": round(compile_s, 1),
    }
    if mem.temp_size_in_bytes > args.max_temp_gib * 2**30:
        record["skipped"] = f"temp memory above --max_temp_gib {args.max_temp_gib}"
        return record
    state = jax.jit(make_init_state(c, model, tx), out_shardings=state_sharding)(init_rng)
    n_matmul = matmul_param_count(state.params)
    times = []
    for i in range(1 + args.repeats):
        t = time.perf_counter()
        state, metrics = compiled(state, batch, step_rng)
        jax.block_until_ready((state, metrics))
        if i > 0:
            times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    tokens = record["tokens_per_step"]
    flops = model_flops(c, n_matmul)
    peak, source = peak_flops(dtype)
    record.update(
        step_seconds=seconds,
        step_seconds_all=times,
        tokens_per_sec=tokens / seconds,
        seconds_per_mtok=seconds / tokens * 1e6,
        model_flops=flops,
        mfu=flops / seconds / peak,
        peak_flops=peak,
        peak_source=source,
        loss=float(metrics["loss_sum"]) / float(metrics["weight_sum"]),
        n_params=sum(int(p.size) for p in jax.tree.leaves(state.params)),
        model=(
            f"{c.model.n_layers} layers, d_model {c.model.d_model}, d_ff {c.model.d_ff}, "
            f"{c.model.n_heads}x{c.model.d_head} heads, LSH chunk {c.model.lsh_chunk_len}, "
            f"{c.model.n_hashes} hashes, {c.model.n_buckets} buckets"
            + (f" as {tuple(c.model.bucket_factors)}" if c.model.bucket_factors else "")
        ),
    )
    return record


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in records if "step_seconds" in r]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in VARIANTS:
        for dtype in sorted({r["dtype"] for r in ran}):
            rs = [r for r in ran if r["variant"] == variant and r["dtype"] == dtype]
            if not rs:
                continue
            style = "-" if variant.startswith("lsh") else "--"
            marker = "o" if variant.endswith("reversible") else "s"
            label = f"{variant.replace('_', ', ')} ({dtype})"
            xs = [r["seq_len"] for r in rs]
            ax.plot(xs, [r["seconds_per_mtok"] for r in rs], style, marker=marker, label=label)
            bx.plot(xs, [100 * r["mfu"] for r in rs], style, marker=marker, label=label)
    tokens = ran[0]["tokens_per_step"] if ran else 0
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xlabel(f"sequence length (batch x length = {tokens:,} tokens per step)")
        a.grid(alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("train step seconds per million tokens")
    bx.set_ylabel("model FLOPs utilization (%)")
    bx.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    device = records[0]["device"] if records else ""
    fig.suptitle(f"Whole train step at fixed tokens per step ({device})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(records: list[dict]) -> str:
    lines = [
        "| length | batch | model | dtype | s/step | s per M tokens | MFU | XLA temp GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "step_seconds" not in r:
            lines.append(
                f"| {r['seq_len']:,} | {r['batch']} | {r['variant']} | {r['dtype']} | "
                f"({r['skipped']}) | | | {r['temp_bytes'] / 2**30:.2f} |"
            )
            continue
        lines.append(
            f"| {r['seq_len']:,} | {r['batch']} | {r['variant']} | {r['dtype']} | "
            f"{r['step_seconds']:.2f} | {r['seconds_per_mtok']:.1f} | {100 * r['mfu']:.1f}% | "
            f"{r['temp_bytes'] / 2**30:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale",
        choices=("small", "enwik8"),
        default="small",
        help="small: the widths below; enwik8: configs/enwik8.py's model",
    )
    parser.add_argument("--lengths", default="4096,8192,16384,32768,65536")
    parser.add_argument("--tokens", type=int, default=65_536, help="tokens per step")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument(
        "--full_max_len",
        type=int,
        default=16_384,
        help="full attention only up to this length (it is O(L^2))",
    )
    parser.add_argument(
        "--max_temp_gib",
        type=float,
        default=10.0,
        help="skip (and record) a point whose XLA temp memory is larger",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n_layers", type=int, default=2)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--d_ff", type=int, default=1024)
    parser.add_argument("--n_heads", type=int, default=4)
    parser.add_argument("--d_head", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64, help="LSH chunk length")
    parser.add_argument("--n_hashes", type=int, default=2)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="a config override applied last, e.g. model.position_chunk_size=2048 (repeatable)",
    )
    parser.add_argument("--out", default="docs/benchmarks/step_cpu.json")
    args = parser.parse_args()
    for v in args.variants.split(","):
        if v not in VARIANTS:
            parser.error(f"--variants: unknown {v!r}; allowed: {', '.join(VARIANTS)}")
    records = []
    for dtype in args.dtypes.split(","):
        for variant in args.variants.split(","):
            for seq_len in map(int, args.lengths.split(",")):
                if variant.startswith("full") and seq_len > args.full_max_len:
                    continue
                r = run_point(args, seq_len, variant, dtype)
                r["device"] = device_label()
                r["overrides"] = args.set
                r["command"] = "python scripts/bench_step.py " + " ".join(sys.argv[1:])
                records.append(r)
                print(
                    json.dumps({k: v for k, v in r.items() if k != "step_seconds_all"}), flush=True
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    plot(records, out.with_suffix(".png"))
    print(markdown(records))


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    main()
