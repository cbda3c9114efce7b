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

A decoder layer has a third half between the two, cross-attention to the encoder output
(see `reversible_stack`); the encoder output is differentiated through every layer.

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

# half_fn(params, x_BxLxD, rngs, aux_in, context, memory) -> (out_BxLxD, aux_out). `aux_in`
# is None in the forward pass and the forward pass's aux output (LSH buckets) when the
# backward pass recomputes the half; halves without one return None. `memory` is the
# differentiated encoder output that cross-attention halves read (None without one).
HalfFn = Callable[[Any, jax.Array, Any, Any, Any, Any], tuple[jax.Array, Any]]


def layer_rngs(rngs: dict[str, jax.Array], layer: jax.Array, n_halves: int = 2) -> list[dict]:
    """The keys of one layer's halves, derived from the stack's base keys: half `h` of layer
    `i` folds in `n_halves * i + h`. The last half (feed-forward) gets no "hash" key."""
    return [
        {
            name: jax.random.fold_in(key, n_halves * layer + h)
            for name, key in rngs.items()
            if name != "hash" or h < n_halves - 1
        }
        for h in range(n_halves)
    ]


def half_input(a: jax.Array, b: jax.Array | None) -> jax.Array:
    """What the next half reads: the second stream (two streams), or the one stream."""
    return a if b is None else b


def add_half(a: jax.Array, b: jax.Array | None, out: jax.Array):
    """The streams after a half's output `out`: `(A, B) -> (B, A + out)`, or `x + out` for
    one stream (B None)."""
    return (a + out, None) if b is None else (b, a + out)


def _n_repeats(params: Sequence) -> int:
    return jax.tree.leaves(params)[0].shape[0]


def _at(tree, r):
    return jax.tree.map(lambda a: a[r], tree)


def _zero_aux_like(half_fns, params, x, rngs, context, memory):
    """Zeros shaped like each (pattern position, half)'s aux output (None where none)."""
    auxes = []
    for j, fns in enumerate(half_fns):
        rs = layer_rngs(rngs, jnp.int32(j), len(fns))
        row = []
        for h, f in enumerate(fns):
            shape = jax.eval_shape(
                lambda p, x, r, f=f: f(p, x, r, None, context, memory)[1],
                _at(params[j][h], 0),
                x,
                rs[h],
            )
            row.append(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape))
        auxes.append(tuple(row))
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


def _forward(half_fns, params, x1, x2, rngs, context, memory, spacing):
    """Runs the stack; returns ((Y1, Y2), auxes): auxes[j][h] holds the aux output of half
    h at pattern position j for every layer (zeros at layers of other positions)."""
    n_pattern = len(half_fns)
    zero_auxes = _zero_aux_like(half_fns, params, x2, rngs, context, memory)

    def layer(j, a, b, i):
        n_halves = len(half_fns[j])
        p, rs = _at(params[j], i // n_pattern), layer_rngs(rngs, i, n_halves)
        auxes = []
        for h, f in enumerate(half_fns[j]):  # (a, b) -> (b, a + H(b))
            out, aux = f(p[h], b, rs[h], None, context, memory)
            a, b = b, a + on_grid(out, spacing)
            auxes.append(aux)
        return a, b, zero_auxes[:j] + (tuple(auxes),) + zero_auxes[j + 1 :]

    def step(carry, i):
        a, b, auxes = jax.lax.switch(
            i % n_pattern, [functools.partial(layer, j) for j in range(n_pattern)], *carry, i
        )
        return (a, b), auxes

    n_layers = _n_repeats(params) * n_pattern
    x1, x2 = on_grid(x1, spacing), on_grid(x2, spacing)
    return jax.lax.scan(step, (x1, x2), jnp.arange(n_layers))


def plain_stack(
    half_fns: Sequence[Sequence[HalfFn]],
    params: Sequence,
    x1: jax.Array,
    x2: jax.Array | None,
    rngs: dict,
    context: Any = None,
    memory: Any = None,
    *,
    spacing: float | None = None,
):
    """The same network differentiated by ordinary autodiff (stores every activation); with
    `x2=None`, the one-stream residual network `x + H(x)` for each half H in turn (the
    standard pre-LayerNorm Transformer: every half begins with its LayerNorm). Returns
    `(Y1, Y2)`, Y2 None for one stream.

    A scan over the repeats of the pattern with its layers unrolled in the body, not the
    `lax.switch` of the reversible forward pass: differentiating a switch stores the
    residuals of every branch at every layer.
    """
    n_pattern = len(half_fns)

    def repeat(carry, r):
        a, b = carry
        for j, fns in enumerate(half_fns):
            p, rs = _at(params[j], r), layer_rngs(rngs, r * n_pattern + j, len(fns))
            for h, f in enumerate(fns):
                out = f(p[h], half_input(a, b), rs[h], None, context, memory)[0]
                a, b = add_half(a, b, on_grid(out, spacing))
        return (a, b), None

    x1, x2 = on_grid(x1, spacing), None if x2 is None else on_grid(x2, spacing)
    return jax.lax.scan(repeat, (x1, x2), jnp.arange(_n_repeats(params)))[0]


def _backward(half_fns, spacing, residuals, cotangents):
    """The reversible stack's backward pass: a reverse scan over the layers that undoes each
    half from the layer's outputs (`(A, B) -> (B, A + H(B))` inverted as `A = B' - H(A')`),
    recomputes it under `jax.vjp` with the forward pass's aux (buckets) and keys, and
    returns the gradients of the parameters, both input streams and the memory."""
    params, y1, y2, rngs, context, memory, auxes = residuals
    n_pattern, n_halves = len(half_fns), len(half_fns[0])

    # Each half's parameter gradients leave the scan as one flat row (padded to the
    # largest of its position in the layer), so XLA stacks them in place instead of
    # copying an accumulator.
    ravels = [
        [ravel_pytree(half) for half in _at(params[j], 0)] for j in range(n_pattern)
    ]  # [j][h] -> (flat, unravel)
    widths = [max(ravels[j][h][0].size for j in range(n_pattern)) for h in range(n_halves)]

    def row(grads, h):
        flat = ravel_pytree(grads)[0]
        return jnp.pad(flat, (0, widths[h] - flat.size))

    # One `lax.switch` over the pattern position per half, the streams updated outside:
    # a branch's outputs get fresh buffers, so a switch over the whole layer would hold
    # the old streams and the new ones at once.
    def half_part(j, h, x, d_out, i):  # H(x), its vjp, with the forward pass's aux.
        p = _at(params[j][h], i // n_pattern)
        r = layer_rngs(rngs, i, n_halves)[h]
        aux_in = jax.tree.map(lambda a: a[i], auxes[j][h])
        out, vjp, _ = jax.vjp(
            lambda p, x, m: half_fns[j][h](p, x, r, aux_in, context, m),
            p,
            x,
            memory,
            has_aux=True,
        )
        dp, dx, dm = vjp(d_out)
        return out, dx, dm, row(dp, h)

    def step(carry, i):
        a, b, da, db, dmem = carry  # a layer's outputs and their cotangents
        rows = [None] * n_halves
        for h in reversed(range(n_halves)):  # undo (A, B) -> (B, A + H(B))
            branches = [functools.partial(half_part, j, h) for j in range(n_pattern)]
            out, dx, dm, rows[h] = jax.lax.switch(i % n_pattern, branches, a, db, i)
            a, b = b - on_grid(out, spacing), a
            da, db = db, da + dx
            dmem = None if dmem is None else dmem + dm
        return (a, b, da, db, dmem), tuple(rows)

    n_repeats = _n_repeats(params)
    dmem0 = None if memory is None else jax.tree.map(jnp.zeros_like, memory)
    (_, _, dx1, dx2, dmem), rows = jax.lax.scan(
        step, (y1, y2, *cotangents, dmem0), jnp.arange(n_repeats * n_pattern), reverse=True
    )
    rows = [r.reshape(n_repeats, n_pattern, -1) for r in rows]
    dparams = [
        type(params[j])(
            jax.vmap(ravels[j][h][1])(rows[h][:, j, : ravels[j][h][0].size])
            for h in range(n_halves)
        )
        for j in range(n_pattern)
    ]
    return type(params)(dparams), dx1, dx2, None, None, dmem


def reversible_stack(
    half_fns: Sequence[Sequence[HalfFn]],
    params: Sequence,
    x1: jax.Array,
    x2: jax.Array,
    rngs: dict,
    context: Any = None,
    memory: Any = None,
    *,
    spacing: float | None = None,
):
    """Runs the layers with reversible memory; returns `(Y1, Y2)`.

    Each half `H` of a layer maps the streams `(A, B)` to `(B, A + H(B))`: with two halves
    (attention F, feed-forward G) a layer is `Y1 = X1 + F(X2)`, `Y2 = X2 + G(Y1)`; a decoder
    layer has three (self-attention, cross-attention, feed-forward), and its streams leave it
    in swapped roles, which the next layer takes as they come.

    Args:
      half_fns: per position of the pattern, the functions of its halves (see `HalfFn`). A
        half given `aux_in` (buckets) must use it instead of hashing.
      params: per pattern position, a tuple of its halves' parameters, each with a leading
        axis over the repeats of the pattern; differentiated.
      x1, x2: the two input streams `[B, L, D]`; differentiated.
      rngs: base keys by stream name ("hash", "dropout"); each half's keys come from
        `layer_rngs`.
      context: anything else the functions read (e.g. the padding masks); not differentiated.
      memory: what cross-attention halves attend to (the encoder output); differentiated,
        its gradient summed over the layers.
      spacing: keep the streams on this fixed-point grid (`on_grid`; None: plain float32).
    """
    half_fns = tuple(tuple(fns) for fns in half_fns)
    n_halves = len(half_fns[0])
    if any(len(fns) != n_halves for fns in half_fns):
        raise ValueError("every layer of a reversible stack needs the same number of halves")

    @jax.custom_vjp
    def stack(params, x1, x2, rngs, context, memory):
        return _forward(half_fns, params, x1, x2, rngs, context, memory, spacing)[0]

    def stack_fwd(params, x1, x2, rngs, context, memory):
        (y1, y2), auxes = _forward(half_fns, params, x1, x2, rngs, context, memory, spacing)
        return (y1, y2), (params, y1, y2, rngs, context, memory, auxes)

    def stack_bwd(residuals, cotangents):
        return _backward(half_fns, spacing, residuals, cotangents)

    stack.defvjp(stack_fwd, stack_bwd)
    return stack(params, x1, x2, rngs, context, memory)
