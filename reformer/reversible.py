"""The reversible residual stack (RevNet; Reformer Section 3) as a `jax.custom_vjp`.

Each layer maps two streams `(X1, X2)` to

    Y1 = X1 + F(X2)        F: attention half (LayerNorm, attention, dropout)
    Y2 = X2 + G(Y1)        G: feed-forward half (LayerNorm, feed-forward, dropout)

and is inverted by `X2 = Y2 - G(Y1)`, `X1 = Y1 - F(X2)`. The forward pass keeps only the
final `(Y1, Y2)`, the parameters it was given, the rng keys and each layer's small
auxiliary output (the LSH buckets); the backward pass walks the layers in reverse,
reconstructs each layer's inputs from its outputs and recomputes it under `jax.vjp`.
Activation memory therefore does not grow with depth.

The layers repeat a pattern of `P` attention types (e.g. local, local, LSH, local) `R`
times; the parameters of pattern position `j` are stacked along a leading axis of length
`R`. The stack is one `lax.scan` over the `R * P` layers whose body picks layer `i`'s
function with `lax.switch(i % P, ...)` and its parameters at `i // P`. One layer per
iteration matters for memory, measured with XLA on CPU: with several layers unrolled in
one body, their temporaries stayed alive at once and memory grew (see docs/benchmarks.md).

Two rules make the gradients exact (equal to those of the same network without
reversibility): the recomputation uses the rng keys of the forward pass (same dropout
masks), and it reuses the forward pass's LSH buckets instead of hashing the reconstructed
inputs again, which differ in the last bits and may fall into other buckets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

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


def _at(tree, r):
    return jax.tree.map(lambda a: a[r], tree)


def _zero_aux_like(attention_fns, params, x2, rngs, context):
    """Zeros shaped like each pattern position's aux output (None where it has none)."""
    auxes = []
    for j, f in enumerate(attention_fns):
        r_f, _ = layer_rngs(rngs, jnp.int32(j))
        shape = jax.eval_shape(
            lambda p, x, r, f=f: f(p, x, r, None, context)[1], _at(params[j][0], 0), x2, r_f
        )
        auxes.append(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape))
    return tuple(auxes)


def on_grid(x: jax.Array, spacing: float | None) -> jax.Array:
    """`x` rounded to a multiple of `spacing` (None: unchanged), with the derivative of the
    identity.

    Streams and branch outputs on one fixed-point grid add and subtract exactly in float32
    (while |values| < 2^24 * spacing), so the reconstruction `X1 = Y1 - F(X2)` returns the
    forward pass's `X1` bit for bit when `F(X2)` is recomputed bit for bit (fixed-point
    reversibility, as in MacKay et al., "Reversible Recurrent Neural Networks", 2018). Used
    in mixed precision, where one last-bit difference in a reconstructed input can flip the
    bfloat16 rounding of a product's operand and move it by 0.4%.
    """
    if spacing is None:
        return x
    return x + lax.stop_gradient(jnp.round(x * (1 / spacing)) * spacing - x)


def _forward(attention_fns, feed_forward_fns, params, x1, x2, rngs, context, spacing):
    """Runs the stack; returns ((Y1, Y2), auxes): auxes[j] holds pattern position j's aux
    output for every layer (zeros at layers of other positions)."""
    n_pattern = len(attention_fns)
    zero_auxes = _zero_aux_like(attention_fns, params, x2, rngs, context)

    def layer(j, x1, x2, i):
        (p_f, p_g), (r_f, r_g) = _at(params[j], i // n_pattern), layer_rngs(rngs, i)
        f_out, aux = attention_fns[j](p_f, x2, r_f, None, context)
        x1 = x1 + on_grid(f_out, spacing)
        x2 = x2 + on_grid(feed_forward_fns[j](p_g, x1, r_g, context), spacing)
        return x1, x2, zero_auxes[:j] + (aux,) + zero_auxes[j + 1 :]

    def step(carry, i):
        x1, x2, auxes = jax.lax.switch(
            i % n_pattern, [functools.partial(layer, j) for j in range(n_pattern)], *carry, i
        )
        return (x1, x2), auxes

    n_layers = _n_repeats(params) * n_pattern
    x1, x2 = on_grid(x1, spacing), on_grid(x2, spacing)
    return jax.lax.scan(step, (x1, x2), jnp.arange(n_layers))


def plain_stack(
    attention_fns: Sequence[AttentionFn],
    feed_forward_fns: Sequence[FeedForwardFn],
    params: Sequence,
    x1: jax.Array,
    x2: jax.Array,
    rngs: dict,
    context: Any = None,
    *,
    spacing: float | None = None,
):
    """The same network differentiated by ordinary autodiff (stores every activation); with
    `x2=None`, the one-stream residual network `x + F(x)`, `x + G(x)` (the standard
    pre-LayerNorm Transformer: F and G begin with their LayerNorm). Returns `(Y1, Y2)`, Y2
    None for one stream.

    A scan over the repeats of the pattern with its layers unrolled in the body, not the
    `lax.switch` of the reversible forward pass: differentiating a switch stores the
    residuals of every branch at every layer.
    """
    n_pattern = len(attention_fns)

    def repeat(carry, r):
        x1, x2 = carry
        for j in range(n_pattern):
            (p_f, p_g), (r_f, r_g) = _at(params[j], r), layer_rngs(rngs, r * n_pattern + j)
            f_in = x1 if x2 is None else x2
            x1 = x1 + on_grid(attention_fns[j](p_f, f_in, r_f, None, context)[0], spacing)
            g_out = on_grid(feed_forward_fns[j](p_g, x1, r_g, context), spacing)
            x1, x2 = (x1 + g_out, None) if x2 is None else (x1, x2 + g_out)
        return (x1, x2), None

    x1, x2 = on_grid(x1, spacing), None if x2 is None else on_grid(x2, spacing)
    return jax.lax.scan(repeat, (x1, x2), jnp.arange(_n_repeats(params)))[0]


def reversible_stack(
    attention_fns: Sequence[AttentionFn],
    feed_forward_fns: Sequence[FeedForwardFn],
    params: Sequence,
    x1: jax.Array,
    x2: jax.Array,
    rngs: dict,
    context: Any = None,
    *,
    spacing: float | None = None,
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
      spacing: keep the streams on this fixed-point grid (`on_grid`; None: plain float32).
      reuse_aux: False recomputes the backward pass without the saved buckets (only for
        tests that show why they are needed).
      backward_rngs: keys for the recomputation instead of `rngs` (only for tests that prove
        the saved buckets are used: with other hash keys the gradients must not change).
    """
    attention_fns, feed_forward_fns = tuple(attention_fns), tuple(feed_forward_fns)
    n_pattern = len(attention_fns)

    @jax.custom_vjp
    def stack(params, x1, x2, rngs, context):
        return _forward(attention_fns, feed_forward_fns, params, x1, x2, rngs, context, spacing)[0]

    def stack_fwd(params, x1, x2, rngs, context):
        (y1, y2), auxes = _forward(
            attention_fns, feed_forward_fns, params, x1, x2, rngs, context, spacing
        )
        return (y1, y2), (params, y1, y2, rngs, context, auxes)

    def stack_bwd(residuals, cotangents):
        params, y1, y2, rngs, context, auxes = residuals
        recompute_rngs = rngs if backward_rngs is None else backward_rngs

        # Each half's parameter gradients leave the scan as one flat row (padded to the
        # largest of its kind), so XLA stacks them in place instead of copying an
        # accumulator.
        ravels = [
            [ravel_pytree(half) for half in _at(params[j], 0)] for j in range(n_pattern)
        ]  # [j][0 = attention, 1 = feed-forward] -> (flat, unravel)
        widths = [max(ravels[j][h][0].size for j in range(n_pattern)) for h in (0, 1)]

        def row(grads, h):
            flat = ravel_pytree(grads)[0]
            return jnp.pad(flat, (0, widths[h] - flat.size))

        # Each half runs in its own `lax.switch` over the pattern position, and the streams
        # are updated outside: a branch's outputs get fresh buffers, so a switch over the
        # whole layer would hold the four old streams and the new ones at once.
        def g_part(j, y1, dy2, i):  # Y2 = X2 + G(Y1): G(Y1) and its vjp.
            p_g, r_g = _at(params[j][1], i // n_pattern), layer_rngs(recompute_rngs, i)[1]
            g = feed_forward_fns[j]
            g_out, g_vjp = jax.vjp(lambda p, y: g(p, y, r_g, context), p_g, y1)
            dp_g, dy1_through_g = g_vjp(dy2)
            return g_out, dy1_through_g, row(dp_g, 1)

        def f_part(j, x2, dy1, i):  # Y1 = X1 + F(X2), with the forward pass's buckets.
            p_f, r_f = _at(params[j][0], i // n_pattern), layer_rngs(recompute_rngs, i)[0]
            f, aux_in = attention_fns[j], _at(auxes[j], i) if reuse_aux else None
            f_out, f_vjp, _ = jax.vjp(
                lambda p, x: f(p, x, r_f, aux_in, context), p_f, x2, has_aux=True
            )
            dp_f, dx2_through_f = f_vjp(dy1)
            return f_out, dx2_through_f, row(dp_f, 0)

        def step(carry, i):
            y1, y2, dy1, dy2 = carry
            branches = [functools.partial(g_part, j) for j in range(n_pattern)]
            g_out, dy1_through_g, g_row = jax.lax.switch(i % n_pattern, branches, y1, dy2, i)
            x2, dy1 = y2 - on_grid(g_out, spacing), dy1 + dy1_through_g
            branches = [functools.partial(f_part, j) for j in range(n_pattern)]
            f_out, dx2_through_f, f_row = jax.lax.switch(i % n_pattern, branches, x2, dy1, i)
            return (y1 - on_grid(f_out, spacing), x2, dy1, dy2 + dx2_through_f), (f_row, g_row)

        n_repeats = _n_repeats(params)
        (_, _, dx1, dx2), rows = jax.lax.scan(
            step, (y1, y2, *cotangents), jnp.arange(n_repeats * n_pattern), reverse=True
        )
        rows = [r.reshape(n_repeats, n_pattern, -1) for r in rows]
        dparams = [
            type(params[j])(
                jax.vmap(ravels[j][h][1])(rows[h][:, j, : ravels[j][h][0].size]) for h in (0, 1)
            )
            for j in range(n_pattern)
        ]
        return type(params)(dparams), dx1, dx2, None, None

    stack.defvjp(stack_fwd, stack_bwd)
    return stack(params, x1, x2, rngs, context)
