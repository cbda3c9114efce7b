"""The encoder-decoder's memory against length, and its decoding speed.

    python scripts/bench_encdec.py memory --out docs/benchmarks/encdec_memory_cpu.json
    python scripts/bench_encdec.py decode --out docs/benchmarks/encdec_decode_cpu.json

`memory`: XLA's memory analysis of one train step (compiled, not run, as
`scripts/bench_long_context.py`), source = target = 4K ... 64K tokens, batch 1: a reversible
encoder-decoder of 2 + 2 layers (d_model 256, 4 heads of 64, d_ff 1024, axial positions),
its encoder and decoder self-attention LSH (chunk 64, 2 hashes, two buckets per chunk),
cross-attention LSH (`lsh`) or full (`full`, beside it). One record per point: {"cross",
"seq_len", "temp_bytes", "total_bytes", "temp_bytes_per_token", "n_params", "compile_s",
"device"}.

`decode`: tokens per second of one target of 1,024 tokens after a source of 4,096 (batch 1,
random weights: speed does not depend on them; no end token), for the same model with a
local self-attention decoder (chunk 64) and LSH cross-attention: `cached` (the source
encoded once, each token one cached step: `decode.generate`), `uncached` (the source
encoded once, each token a forward pass of the decoder over the whole target buffer, timed
over `--uncached_tokens` tokens), `beam4` (`beam.beam_search` with 4 beams; tokens of the
best beam per second) and `greedy` (= cached). Medians of `--repeats` timed runs after a
compiling one. Records: {"mode", "source_len", "target_len", "tokens_per_sec",
"ms_per_token", "device"}.

Each writes its JSON, a PNG beside it, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from reformer.config import default_config
from reformer.decoding import beam
from reformer.decoding import cache as decoding_cache
from reformer.decoding import sampling as decode
from reformer.experiments.memory import device_name, step_memory
from reformer.model.models import ReformerEncoderDecoder, init_params
from reformer.training.state import make_model

LENGTHS = (4096, 8192, 16384, 32768, 65536)


def encdec_config(seq_len: int, source_len: int, cross: str, decoder_types=("lsh",)):
    c = default_config()
    m = c.model
    m.kind, m.cross_attention, m.residual = "encoder_decoder", cross, "reversible"
    m.vocab_size, m.d_model, m.d_ff, m.n_heads, m.d_head = 258, 256, 1024, 4, 64
    m.attention_types, m.encoder_attention_types = tuple(decoder_types), ("lsh",)
    m.n_layers = m.n_encoder_layers = 2
    m.lsh_chunk_len = m.local_chunk_len = 64
    m.n_hashes = 2
    longest = max(seq_len, source_len)
    m.positional, m.axial_shape, m.axial_dims = "axial", (longest // 64, 64), (128, 128)
    m.max_len = longest
    c.data.name, c.data.seq_len, c.data.source_len = "reverse", seq_len, source_len
    c.train.batch_size = 1
    return c


def memory(lengths, crosses) -> list[dict]:
    records = []
    for cross in crosses:
        for n in lengths:
            r = {"cross": cross, "seq_len": n, **step_memory(encdec_config(n, n, cross))}
            r["temp_bytes_per_token"] = r["temp_bytes"] / n
            r["device"] = device_name()
            records.append(r)
            print(json.dumps(r), flush=True)
    return records


@functools.partial(jax.jit, static_argnames=("cfg", "length"))
def _uncached(cfg, params, source, *, length):
    """Greedy decoding that re-runs the decoder over the whole target buffer per token (the
    source encoded once)."""
    model = ReformerEncoderDecoder(cfg)
    memory, mask = model.apply({"params": params}, source, method="encode")
    buffer = jnp.zeros((source.shape[0], length), jnp.int32)

    def body(t, buffer):
        logits = model.apply({"params": params}, buffer, memory, mask, method="decode")
        token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, 1, False), -1)
        return buffer.at[:, t].set(token.astype(jnp.int32))

    return jax.lax.fori_loop(0, length, body, buffer)


def decoding(source_len: int, target_len: int, repeats: int, uncached_tokens: int):
    config = encdec_config(target_len, source_len, "lsh", decoder_types=("local",))
    model = make_model(config)
    cfg = decoding_cache.with_training_length(model.cfg, target_len, source_len)
    params = init_params(model, jax.random.key(0), 1, 64)
    source = jax.random.randint(jax.random.key(1), (1, source_len), 2, 258)
    prompt, greedy = jnp.zeros((1, 0), jnp.int32), decode.Sampling(temperature=0.0)
    key = jax.random.key(2)
    runs = {
        "cached": (
            lambda: decode.generate(
                cfg, params, prompt, target_len, key, greedy, end_token=None, source_BxS=source
            ),
            target_len,
        ),
        "beam4": (
            lambda: beam.beam_search(
                cfg, params, prompt, target_len, key, beam_size=4, end_token=None,
                source_BxS=source,
            )[0],
            target_len,
        ),
        "uncached": (
            lambda: _uncached(cfg, params, source, length=uncached_tokens),
            uncached_tokens,
        ),
    }  # fmt: skip
    records = []
    for mode, (run, tokens) in runs.items():
        jax.block_until_ready(run())  # compiles
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        r = {
            "mode": mode,
            "source_len": source_len,
            "target_len": target_len,
            "tokens": tokens,
            "tokens_per_sec": tokens / seconds,
            "ms_per_token": 1e3 * seconds / tokens,
            "device": device_name(),
        }
        records.append(r)
        print(json.dumps(r), flush=True)
    return records


def plot_memory(records, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for cross, style in (("lsh", "o-"), ("full", "s--")):
        rs = [r for r in records if r["cross"] == cross]
        if rs:
            ax.plot([r["seq_len"] for r in rs], [r["temp_bytes_per_token"] / 1024 for r in rs],
                    style, label=f"{cross} cross-attention")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("source = target tokens (batch 1)")
    ax.set_ylabel("XLA temp memory per token (KiB)")
    ax.set_title(f"Encoder-decoder train step, LSH self-attention ({records[0]['device']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_decoding(records, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar([r["mode"] for r in records], [r["tokens_per_sec"] for r in records])
    ax.set_yscale("log")
    ax.set_ylabel("tokens per second")
    r0 = records[0]
    ax.set_title(
        f"Decoding {r0['target_len']} target tokens after {r0['source_len']} ({r0['device']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("memory", "decode"))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--cross", default="lsh,full", help="memory: cross-attention kinds")
    parser.add_argument("--source_len", type=int, default=4096)
    parser.add_argument("--target_len", type=int, default=1024)
    parser.add_argument("--uncached_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.what == "memory":
        records = memory(list(map(int, args.lengths.split(","))), args.cross.split(","))
        out.write_text(json.dumps(records, indent=1) + "\n")
        plot_memory(records, out.with_suffix(".png"))
        print("| cross | tokens | temp GiB | total GiB | temp KiB per token |")
        print("|---|---|---|---|---|")
        for r in records:
            gib = f"{r['temp_bytes'] / 2**30:.2f} | {r['total_bytes'] / 2**30:.2f}"
            per_token = r["temp_bytes_per_token"] / 1024
            print(f"| {r['cross']} | {r['seq_len']:,} | {gib} | {per_token:.0f} |")
        return
    records = decoding(args.source_len, args.target_len, args.repeats, args.uncached_tokens)
    out.write_text(json.dumps(records, indent=1) + "\n")
    plot_decoding(records, out.with_suffix(".png"))
    print("| mode | tokens/s | ms per token |")
    print("|---|---|---|")
    for r in records:
        print(f"| {r['mode']} | {r['tokens_per_sec']:.1f} | {r['ms_per_token']:.2f} |")


if __name__ == "__main__":
    main()
