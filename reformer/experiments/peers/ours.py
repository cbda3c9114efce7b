"""The peers benchmark's step in this project: `steps.jit_train_step`, compiled ahead of time
as `reformer/training/loop.py` runs it (state donated, batch sharded over the mesh)."""

from __future__ import annotations

import os

from reformer.experiments.peers.common import (
    VOCAB,
    axial_dims,
    axial_shape,
    jax_device_name,
    jax_setup,
    n_buckets,
    tokens,
)


def ours_config(args, seq_len: int, reversible: bool):
    """The benchmark's model as this project's config: every layer LSH, axial positions, no
    dropout, Adam; reversible or two plain streams."""
    from reformer.config.schema import default_config

    c = default_config()
    m = c.model
    m.vocab_size, m.d_model, m.d_ff = VOCAB, args.d_model, args.d_ff
    m.n_heads, m.d_head, m.n_layers = args.n_heads, args.d_head, args.n_layers
    m.attention_types = ("lsh",)
    m.lsh_chunk_len, m.n_buckets, m.n_hashes = args.chunk, n_buckets(args, seq_len), args.n_hashes
    m.causal, m.residual = True, "reversible" if reversible else "two_stream"
    m.positional = "axial"
    m.axial_shape, m.axial_dims = axial_shape(seq_len), axial_dims(args.d_model)
    m.max_len = seq_len
    m.position_chunk_size = args.ours_ff_chunk
    m.dropout = m.attention_dropout = 0.0
    c.data.name, c.data.seq_len = "enwik8", seq_len
    c.train.batch_size = args.batch
    c.optimizer.name = "adam"
    return c


def compiled_step(c, x):
    """The train step of config `c` on the token batch `x`, built, sharded and compiled as
    the trainer does: (compiled step, initial state, sharded batch, step key)."""
    import jax
    import numpy as np

    from reformer.training import sharding
    from reformer.training.optimizer import make_optimizer
    from reformer.training.state import abstract_state, make_init_state, make_model
    from reformer.training.steps import compile_train_step, jit_train_step

    mesh = sharding.make_mesh(c.mesh)
    model = make_model(c)
    tx = make_optimizer(c.optimizer)
    init_rng, step_rng = jax.random.split(jax.random.key(c.train.seed))
    abstract = abstract_state(c, model, tx, mesh)
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
    state = jax.jit(make_init_state(c, model, tx), out_shardings=state_sharding)(init_rng)
    p_train_step = jit_train_step(c, model, tx, mesh, state_sharding)
    batch = sharding.global_batch(mesh, {"tokens": x, "weights": np.ones(x.shape, np.float32)})
    p_train_step, _ = compile_train_step(p_train_step, state, batch, step_rng)
    return p_train_step, state, batch, step_rng


def build_ours(args, seq_len: int, reversible: bool):
    """(step, info): `step()` runs one train step, waits for it and returns its loss (nats
    per token); `info` describes the model for the records."""
    import jax

    from reformer.config.validation import validate

    jax_setup(args)
    c = ours_config(args, seq_len, reversible)
    validate(c, num_devices=jax.device_count())
    p_train_step, state, batch, step_rng = compiled_step(c, tokens(args, seq_len))
    holder = {"state": state}

    def step() -> float:
        new_state, metrics = p_train_step(holder["state"], batch, step_rng)
        jax.block_until_ready((new_state, metrics))
        holder["state"] = new_state
        return float(metrics["loss_sum"]) / float(metrics["weight_sum"])

    m = c.model
    info = {
        "reversible": reversible,
        "n_params": sum(int(p.size) for p in jax.tree.leaves(state.params)),
        "device": jax_device_name(),
        "threads": os.cpu_count(),  # XLA's CPU thread pool spans every core.
        "notes": (
            f"reformer.training.steps.jit_train_step + compile_train_step, as the trainer runs it "
            f"(donated state); "
            f"axial positions {m.axial_shape} dims {m.axial_dims} (concatenated); "
            f"position_chunk_size {m.position_chunk_size}; tanh GELU; Adam (b2 0.98, eps 1e-9) "
            f"after global-norm clipping {c.optimizer.clip_norm}"
        ),
    }
    return step, info
