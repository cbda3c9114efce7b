"""The train state and the jitted step functions: one optimizer step (with gradient
accumulation over micro-batches), one evaluation step, and the state's shapes and shardings.

`train_step` is a pure function `(state, batch, rng) -> (state, metrics)`. The loss of a
step is the summed token loss over the global batch divided by its total weight, so
splitting the batch into `grad_accum_steps` micro-batches (a `lax.scan` whose body is one
micro-batch's gradient) gives the gradient of the whole batch.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from reformer.config.schema import ConfigError
from reformer.decoding import sampling as decode
from reformer.model import models
from reformer.model.models import ModelConfig, loss_and_metrics, retype_layers
from reformer.training import sharding
from reformer.training.optimizer import make_schedule


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_model(config: ml_collections.ConfigDict):
    """The model of `config.model` (`model.kind`)."""
    return models.make_model(ModelConfig.from_config(config.model))


init_params = models.init_params


def make_init_state(config: ml_collections.ConfigDict, model, tx):
    """`key -> TrainState` of fresh parameters and optimizer state."""

    def init_state(key):
        return state_from_params(tx)(init_params(model, key, 1, config.data.seq_len))

    return init_state


def state_from_params(tx):
    """`params -> TrainState` at step 0 with fresh optimizer state (fine-tuning)."""

    def make(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return make


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
    footprint while the step runs."""
    start = time.time()
    compiled = p_train_step.lower(state, batch, rng).compile()
    seconds = time.time() - start
    release_host_memory()
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


def abstract_state(config: ml_collections.ConfigDict, model, tx, mesh):
    """The train state's shapes and dtypes with their shardings over `mesh` (parameters and
    optimizer state split over `fsdp` where it is larger than 1), without computing it."""
    shapes = jax.eval_shape(make_init_state(config, model, tx), jax.random.key(0))
    shardings = sharding.state_shardings(shapes, mesh)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings
    )


def make_eval_fn(config: ml_collections.ConfigDict, model, abstract_params):
    """`(trained params, batch) -> metric sums` under `config.eval` (to be jitted).

    With `config.eval.attention_types` set, the trained weights run under other attention
    types (e.g. an LSH model with full shared-QK attention); a pattern whose parameters
    differ from the trained ones is a ConfigError. `eval.n_hashes` sets LSH's hash rounds.
    """
    n_hashes = config.eval.n_hashes or None
    step_fn = cached_eval_step if config.eval.cached else eval_step
    train_types = tuple(config.model.attention_types)
    eval_types = tuple(config.eval.attention_types) or train_types
    if eval_types == train_types:
        return functools.partial(step_fn, model=model, n_hashes=n_hashes)
    eval_model = models.make_model(dataclasses.replace(model.cfg, attention_types=eval_types))

    def convert(params):
        return retype_layers(params, train_types, eval_types)

    expected = jax.eval_shape(
        lambda: init_params(eval_model, jax.random.key(0), 1, config.data.seq_len)
    )
    got = jax.eval_shape(convert, abstract_params)
    shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
    if shapes(expected) != shapes(got):
        raise ConfigError(
            f"config.eval.attention_types: {eval_types} cannot run the weights of "
            f"model.attention_types {train_types} (their parameters differ). Weights carry "
            "over between 'lsh' and 'full_shared_qk', and between 'full' and 'local'."
        )
    return lambda params, batch: step_fn(
        convert(params), batch, model=eval_model, n_hashes=n_hashes
    )


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


def eval_step(params, batch: dict, *, model, n_hashes: int | None) -> dict:
    """Sums of loss, correct predictions and weights over one batch (no dropout)."""
    return models.batch_sums(
        model, params, batch, n_hashes=n_hashes, rngs={"hash": jax.random.key(0)}
    )


def cached_eval_step(params, batch: dict, *, model, n_hashes: int | None) -> dict:
    """`eval_step` through the decoding caches: the logits sampling would draw from."""
    tokens, source = batch["tokens"], batch.get("inputs")
    source_len = 0 if source is None else source.shape[1]
    logits = decode.cached_logits(
        decode.with_training_length(model.cfg, tokens.shape[1], source_len),
        params,
        tokens,
        jax.random.key(0),
        source,
        n_hashes=n_hashes or model.cfg.n_hashes,
        prefix=tokens.shape[1],
    )
    return loss_and_metrics(logits, tokens, batch["weights"])[1]


def summarize(sums: dict) -> dict:
    """Mean loss (nats/token), bits per token and accuracy from summed metrics."""
    w = max(float(sums["weight_sum"]), 1.0)
    loss = float(sums["loss_sum"]) / w
    return {
        "loss": loss,
        "bits_per_token": loss / math.log(2),
        "accuracy": float(sums["correct_sum"]) / w,
        "tokens": int(round(float(sums["weight_sum"]))),
    }


def evaluate(eval_fn, params, mesh, batches: list[dict]) -> dict:
    total = None
    for local in batches:
        sums = eval_fn(params, sharding.global_batch(mesh, local))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return summarize(jax.device_get(total))


def eval_settings(config: ml_collections.ConfigDict) -> dict:
    """How an evaluation attended: attention types and, where LSH ran, its hash rounds."""
    types = tuple(config.eval.attention_types) or tuple(config.model.attention_types)
    out: dict = {"attention_types": list(types)}
    if "lsh" in types:
        out["n_hashes"] = config.eval.n_hashes or config.model.n_hashes
    if config.eval.cached:
        out["cached"] = True
    return out
