"""The peers benchmark's step in trax: `trax.models.ReformerLM` with `LSHSelfAttention`,
stepped with `jax.jit(jax.value_and_grad(loss))` and Adam; plain autodiff, so not
reversible. Runs in trax's own virtual environment."""

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

ADAM = dict(b1=0.9, b2=0.999, eps=1e-8, lr=1e-4)


def trax_model(args, seq_len: int):
    """The benchmark's model as a `trax.models.ReformerLM` in train mode."""
    import functools

    import trax.layers as tl
    from trax.models.reformer.reformer import ReformerLM

    attention = functools.partial(
        tl.LSHSelfAttention,
        chunk_len=args.chunk,
        n_buckets=n_buckets(args, seq_len),
        n_hashes=args.n_hashes,
        n_chunks_before=1,
        n_chunks_after=0,
    )
    return ReformerLM(
        vocab_size=VOCAB,
        d_model=args.d_model,
        d_ff=args.d_ff,
        d_attention_key=args.d_head,
        d_attention_value=args.d_head,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        dropout=0.0,
        max_len=seq_len,
        attention_type=attention,
        pos_type="axial",
        pos_axial_shape=axial_shape(seq_len),
        pos_d_axial_embs=axial_dims(args.d_model),
        ff_activation=tl.FastGelu,
        mode="train",
    )


def adam_train_step(model, b1: float, b2: float, eps: float, lr: float):
    """`(weights, state, (mu, nu, t), x, rng) -> (weights, state, (mu, nu, t), loss)`: the
    mean next-token loss's gradient by autodiff, then one Adam update."""
    import jax
    import jax.numpy as jnp

    def loss_fn(w, st, x, rng):
        logits, new_st = model.pure_fn(x, w, st, rng)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, x[..., None], axis=-1)), new_st

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(w, st, opt, x, rng):
        (loss, new_st), g = grad_fn(w, st, x, rng)
        mu, nu, t = opt
        t = t + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, g)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, g)
        scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        w = jax.tree.map(lambda p, m, v: p - scale * m / (jnp.sqrt(v) + eps), w, mu, nu)
        return w, new_st, (mu, nu, t), loss

    return train_step


def build_trax(args, seq_len: int):
    """(step, info), as `ours.build_ours` returns them."""
    import jax
    import jax.numpy as jnp
    import trax

    jax_setup(args)
    model = trax_model(args, seq_len)
    x = jnp.asarray(tokens(args, seq_len))
    weights, state = model.init(trax.shapes.signature(x), rng=jax.random.PRNGKey(0))
    p_step = jax.jit(adam_train_step(model, **ADAM), donate_argnums=(0, 1, 2))
    zeros = lambda: jax.tree.map(jnp.zeros_like, weights)  # noqa: E731
    holder = {
        "w": weights,
        "st": state,
        "opt": (zeros(), zeros(), jnp.zeros((), jnp.float32)),
        "rng": jax.random.PRNGKey(1),
    }
    n_params = sum(int(p.size) for p in jax.tree.leaves(weights))

    def step() -> float:
        rng, sub = jax.random.split(holder["rng"])
        w, st, opt, loss = p_step(holder["w"], holder["st"], holder["opt"], x, sub)
        jax.block_until_ready((w, st, opt, loss))
        holder.update(w=w, st=st, opt=opt, rng=rng)
        return float(loss)

    info = {
        "reversible": False,  # jax.grad through trax's ReversibleSerial stores activations.
        "n_params": n_params,
        "device": jax_device_name(),
        "threads": os.cpu_count(),
        "notes": (
            f"trax.models.ReformerLM + LSHSelfAttention (chunk_len {args.chunk}, n_buckets "
            f"{n_buckets(args, seq_len)}, n_parallel_heads 1 default); axial positions "
            f"{axial_shape(seq_len)} dims {axial_dims(args.d_model)}; FastGelu; "
            "jax.jit(jax.value_and_grad(loss)) + Adam: not reversible"
        ),
    }
    return step, info
