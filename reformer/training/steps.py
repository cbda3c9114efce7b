"""The train step: one optimizer step (with gradient accumulation over micro-batches),
jitted over the mesh as training runs it and compiled ahead of time; and the summed
metrics of an evaluation function over batches.

`train_step` is a pure function `(state, batch, rng) -> (state, metrics)`. The loss of a
step is the summed token loss over the global batch divided by its total weight, so
splitting the batch into `grad_accum_steps` micro-batches (a `lax.scan` whose body is one
micro-batch's gradient) gives the gradient of the whole batch.
"""

from __future__ import annotations

import ctypes
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from reformer.model import models
from reformer.training import memory_check, sharding
from reformer.training.metrics import summarize
from reformer.training.optimizer import make_schedule
from reformer.training.state import TrainState


def jit_train_step(config: ml_collections.ConfigDict, model, tx, mesh, state_sharding):
    """`train_step` jitted as training runs it: state donated, batch split over the mesh,
    gradients laid out like the parameters under FSDP; `(state, batch, rng) -> (state,
    metrics)`."""
    batch_sharding = sharding.batch_sharded(mesh)
    fsdp = mesh.shape[sharding.FSDP_AXIS] > 1
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=make_schedule(config.optimizer),
        accum_steps=config.train.grad_accum_steps,
        batch_sharding=batch_sharding,
        grad_sharding=state_sharding.params if fsdp else None,
        label_smoothing=config.train.label_smoothing,
    )
    rep = sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding, rep),
        out_shardings=(state_sharding, rep),
        donate_argnums=(0,),
    )


def compile_train_step(p_train_step, state, batch, rng):
    """The jitted train step compiled ahead of time for these arguments' shapes and
    shardings, and the seconds it took; the compiler's freed heap memory is then returned to
    the operating system (`release_host_memory`), so it does not stay in the process's
    footprint while the step runs. A step that needs more memory than the devices have is
    refused here (`memory_check`)."""
    start = time.time()
    compiled = p_train_step.lower(state, batch, rng).compile()
    seconds = time.time() - start
    release_host_memory()
    memory_check.check_fits(compiled)  # Refused before it runs, not killed while it runs.
    return compiled, seconds


def release_host_memory() -> None:
    """Returns free heap pages to the operating system (glibc's `malloc_trim`; a no-op where
    the C library has none). XLA's compiler frees hundreds of MiB when it is done, which
    glibc would otherwise keep under the step's own buffers."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # Not glibc (macOS, Windows, musl).
        return
    trim(0)


def micro_batches(batch: dict, n: int) -> dict:
    """`[B, ...] -> [n, B / n, ...]`, micro-batch `i` holding rows `i, i + n, ...`, so each
    micro-batch takes the same number of rows from every device's block of the batch."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def loss_sums_and_grads(
    params,
    batch: dict,
    dropout_rng: jax.Array,
    hash_rng: jax.Array,
    *,
    model,
    accum_steps: int = 1,
    batch_sharding=None,
    grad_sharding=None,
    label_smoothing: float = 0.0,
) -> tuple[dict, Any]:
    """Metric sums and the gradient of `loss_sum / weight_sum` over the whole batch; with
    `label_smoothing` e, of `((1 - e) loss_sum + e smooth_sum) / weight_sum` (the targets
    mixed with a uniform distribution over the vocabulary; the metrics stay the plain loss).

    With `accum_steps > 1` the batch is split into that many micro-batches whose gradients
    are summed in a `lax.scan`, so only one micro-batch's activations exist at a time. LSH
    hashes every micro-batch with the same rotations, as it would the whole batch; dropout
    draws a different mask for each micro-batch.
    """
    total_weight = jnp.maximum(batch["weights"].sum(), 1.0)

    def micro(mb, rng):
        def loss_fn(p):
            sums = models.batch_sums(
                model, p, mb, deterministic=False, rngs={"dropout": rng, "hash": hash_rng}
            )
            objective = sums["loss_sum"]
            if label_smoothing:
                objective = (1 - label_smoothing) * objective + label_smoothing * sums["smooth_sum"]
            return objective / total_weight, sums

        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return sums, grads

    if accum_steps == 1:
        return micro(batch, dropout_rng)
    mbs = micro_batches(batch, accum_steps)

    def body(carry, xs):
        mb, i = xs
        if batch_sharding is not None:
            mb = jax.lax.with_sharding_constraint(mb, batch_sharding)
        sums, grads = micro(mb, jax.random.fold_in(dropout_rng, i))
        carry = jax.tree.map(jnp.add, carry, (sums, grads))
        if grad_sharding is not None:
            carry = (carry[0], jax.lax.with_sharding_constraint(carry[1], grad_sharding))
        return carry, None

    zeros = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(lambda: micro(jax.tree.map(lambda x: x[0], mbs), dropout_rng)),
    )
    (sums, grads), _ = jax.lax.scan(body, zeros, (mbs, jnp.arange(accum_steps)))
    return sums, grads


def all_finite(tree) -> jax.Array:
    """True when every element of every array in `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    model,
    tx: optax.GradientTransformation,
    schedule,
    accum_steps: int = 1,
    batch_sharding=None,
    grad_sharding=None,
    label_smoothing: float = 0.0,
) -> tuple[TrainState, dict]:
    """One optimizer step. Dropout and hash keys are `fold_in(rng, step)`.

    `metrics["finite"]` is False when the loss, the gradient or the new state is not finite;
    the loop checks it before anything is saved.
    """
    dropout_rng, hash_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    sums, grads = loss_sums_and_grads(
        state.params,
        batch,
        dropout_rng,
        hash_rng,
        model=model,
        accum_steps=accum_steps,
        batch_sharding=batch_sharding,
        grad_sharding=grad_sharding,
        label_smoothing=label_smoothing,
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree_utils.tree_norm(grads)
    metrics = {
        **sums,
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
        "finite": jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm) & all_finite(params),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def evaluate(eval_fn, params, mesh, batches: list[dict]) -> dict:
    """The summary (`metrics.summarize`) of `eval_fn` over `batches` (host rows, made
    global over `mesh`)."""
    total = None
    for local in batches:
        sums = eval_fn(params, sharding.global_batch(mesh, local))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return summarize(jax.device_get(total))
