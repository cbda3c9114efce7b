"""Timing of jitted functions on this machine: the median of repeated runs, and the LSH
attention kernel of one layer at the peers benchmark's shapes, forward and backward."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, *args, repeats: int) -> float:
    """Median wall seconds of `fn(*args)` over `repeats` runs after a compiling one."""
    import jax

    jax.block_until_ready(fn(*args))  # Compile and warm up.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernel_seconds(args, seq_len: int, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of one layer's LSH attention kernel (shared QK, all heads, no
    projections) in the forward pass and in the backward pass of the benchmark's step.
    `args` holds `batch`, `n_heads`, `d_head`, `chunk` and `n_hashes`."""
    import jax
    import jax.numpy as jnp

    from reformer.attention import lsh
    from reformer.experiments.peers.common import n_buckets as buckets_of

    heads, d = args.batch * args.n_heads, args.d_head
    n_buckets = buckets_of(args, seq_len)
    k_qk, k_v, k_rot, k_out = jax.random.split(jax.random.key(0), 4)
    qk = jax.random.normal(k_qk, (heads, seq_len, d), jnp.float32)
    v = jax.random.normal(k_v, (heads, seq_len, d), jnp.float32)
    rotations = jax.random.normal(k_rot, (heads, d, args.n_hashes, n_buckets // 2), jnp.float32)
    dout = jax.random.normal(k_out, (heads, seq_len, d), jnp.float32)
    settings = dict(chunk_len=args.chunk, causal=True)

    forward = jax.jit(jax.vmap(lambda q, v, r: lsh.lsh_attention(q, v, r, **settings)))

    def recompute_and_grad(q, v, buckets, g):  # The reversible stack's backward pass.
        def attend(q, v):
            out, _ = lsh.lsh_attention(q, v, None, buckets=buckets, n_buckets=n_buckets, **settings)
            return out

        out, vjp = jax.vjp(attend, q, v)
        return out, vjp(g)

    backward = jax.jit(jax.vmap(recompute_and_grad))
    _, buckets = forward(qk, v, rotations)
    return (
        median_seconds(forward, qk, v, rotations, repeats=repeats),
        median_seconds(backward, qk, v, buckets, dout, repeats=repeats),
    )
