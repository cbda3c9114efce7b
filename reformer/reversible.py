"""The reversible residual stack (RevNet; Reformer Section 3) as a `jax.custom_vjp`.

Each layer maps two streams `(X1, X2)` to

    Y1 = X1 + F(X2)        F: attention half (LayerNorm, attention, dropout)
    Y2 = X2 + G(Y1)        G: feed-forward half (LayerNorm, feed-forward, dropout)

and is inverted by `X2 = Y2 - G(Y1)`, `X1 = Y1 - F(X2)`. The forward pass keeps only the
final `(Y1, Y2)`, the parameters it was given, the rng keys and each layer's small
auxiliary output (the LSH buckets); the backward pass walks the layers in reverse,
reconstructs each layer's inputs from its outputs and recomputes it under `jax.vjp`.
Activation memory therefore does not grow with depth.

The layers repeat a pattern of `P` attention types (e.g. local, local, LSH, local); the
stack is a `lax.scan` over the `R` repeats of the pattern, with the `P` layers of one
repeat unrolled in its body and their parameters stacked along a leading axis of length
`R`. Scanning matters for memory, not only for compile time: measured with XLA on CPU, an
unrolled stack kept per-layer temporaries alive (its temp memory grew with depth even in
a plain forward pass), while a scanned one is flat.

Two rules make the gradients exact (equal to those of the same network without
reversibility): the recomputation uses the rng keys of the forward pass (same dropout
masks), and it reuses the forward pass's LSH buckets instead of hashing the reconstructed
inputs again, which differ in the last bits and may fall into other buckets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# attention_fn(params, x_BxLxD, rngs, aux_in, context) -> (out_BxLxD, aux_out)
AttentionFn = Callable[[Any, jax.Array, Any, Any, Any], tuple[jax.Array, Any]]
# feed_forward_fn(params, x_BxLxD, rngs, context) -> out_BxLxD
FeedForwardFn = Callable[[Any, jax.Array, Any, Any], jax.Array]


def layer_rngs(rngs: dict[str, jax.Array], layer: jax.Array) -> tuple[dict, dict]:
    """The keys of one layer's two halves, derived from the stack's base keys.

    The feed-forward half gets no "hash" key (it does not hash).
    """
    r_f = {name: jax.random.fold_in(key, 2 * layer) for name, key in rngs.items()}
    r_g = {
        name: jax.random.fold_in(key, 2 * layer + 1) for name, key in rngs.items() if name != "hash"
    }
    return r_f, r_g


def _n_repeats(params: Sequence) -> int:
    return jax.tree.leaves(params)[0].shape[0]


def _forward(attention_fns, feed_forward_fns, params, x1, x2, rngs, context):
    """Runs the stack; returns ((Y1, Y2), per-pattern-position auxes stacked over repeats)."""
    n_pattern = len(attention_fns)

    def repeat(carry, xs):
        x1, x2 = carry
        p_repeat, r = xs
        auxes = []
        for j in range(n_pattern):
            (p_f, p_g), (r_f, r_g) = p_repeat[j], layer_rngs(rngs, r * n_pattern + j)
            f_out, aux = attention_fns[j](p_f, x2, r_f, None, context)
            x1 = x1 + f_out
            x2 = x2 + feed_forward_fns[j](p_g, x1, r_g, context)
            auxes.append(aux)
        return (x1, x2), tuple(auxes)

    return jax.lax.scan(repeat, (x1, x2), (params, jnp.arange(_n_repeats(params))))


def plain_stack(
    attention_fns: Sequence[AttentionFn],
    feed_forward_fns: Sequence[FeedForwardFn],
    params: Sequence,
    x1: jax.Array,
    x2: jax.Array,
    rngs: dict,
    context: Any = None,
):
    """The same network differentiated by ordinary autodiff (stores every activation)."""
    return _forward(tuple(attention_fns), tuple(feed_forward_fns), params, x1, x2, rngs, context)[0]


def reversible_stack(
    attention_fns: Sequence[AttentionFn],
    feed_forward_fns: Sequence[FeedForwardFn],
    params: Sequence,
    x1: jax.Array,
    x2: jax.Array,
    rngs: dict,
    context: Any = None,
    *,
    reuse_aux: bool = True,
    backward_rngs: dict | None = None,
):
    """Runs the layers with reversible memory; returns `(Y1, Y2)`.

    Args:
      attention_fns, feed_forward_fns: one pure function per position of the pattern (see
        the types above). An attention function given `aux_in` (buckets) must use it
        instead of hashing.
      params: per pattern position, `(attention_params, feed_forward_params)` with a leading
        axis over the repeats of the pattern; differentiated.
      x1, x2: the two input streams `[B, L, D]`; differentiated.
      rngs: base keys by stream name ("hash", "dropout"); each layer's keys come from
        `layer_rngs`.
      context: anything else the functions read (e.g. the padding mask); not differentiated.
      reuse_aux: False recomputes the backward pass without the saved buckets (only for
        tests that show why they are needed).
      backward_rngs: keys for the recomputation instead of `rngs` (only for tests that prove
        the saved buckets are used: with other hash keys the gradients must not change).
    """
    attention_fns, feed_forward_fns = tuple(attention_fns), tuple(feed_forward_fns)
    n_pattern = len(attention_fns)

    @jax.custom_vjp
    def stack(params, x1, x2, rngs, context):
        return _forward(attention_fns, feed_forward_fns, params, x1, x2, rngs, context)[0]

    def stack_fwd(params, x1, x2, rngs, context):
        (y1, y2), auxes = _forward(attention_fns, feed_forward_fns, params, x1, x2, rngs, context)
        return (y1, y2), (params, y1, y2, rngs, context, auxes)

    def stack_bwd(residuals, cotangents):
        params, y1, y2, rngs, context, auxes = residuals
        recompute_rngs = rngs if backward_rngs is None else backward_rngs

        def repeat_bwd(carry, xs):
            y1, y2, dy1, dy2 = carry
            p_repeat, r, aux_repeat = xs
            grads = [None] * n_pattern
            for j in reversed(range(n_pattern)):
                f, g = attention_fns[j], feed_forward_fns[j]
                (p_f, p_g) = p_repeat[j]
                r_f, r_g = layer_rngs(recompute_rngs, r * n_pattern + j)
                aux_in = aux_repeat[j] if reuse_aux else None
                # Undo Y2 = X2 + G(Y1).
                g_out, g_vjp = jax.vjp(lambda p, y, r=r_g, g=g: g(p, y, r, context), p_g, y1)
                x2 = y2 - g_out
                dp_g, dy1_through_g = g_vjp(dy2)
                dy1 = dy1 + dy1_through_g
                # Undo Y1 = X1 + F(X2), with the forward pass's buckets.
                f_out, f_vjp, _ = jax.vjp(
                    lambda p, x, r=r_f, f=f, a=aux_in: f(p, x, r, a, context), p_f, x2, has_aux=True
                )
                x1 = y1 - f_out
                dp_f, dx2_through_f = f_vjp(dy1)
                grads[j] = (dp_f, dp_g)
                y1, y2, dy2 = x1, x2, dy2 + dx2_through_f
            return (y1, y2, dy1, dy2), tuple(grads)

        (_, _, dx1, dx2), dparams = jax.lax.scan(
            repeat_bwd,
            (y1, y2, *cotangents),
            (params, jnp.arange(_n_repeats(params)), auxes),
            reverse=True,
        )
        return type(params)(dparams), dx1, dx2, None, None

    stack.defvjp(stack_fwd, stack_bwd)
    return stack(params, x1, x2, rngs, context)
