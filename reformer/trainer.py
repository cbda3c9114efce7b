"""`train_and_evaluate(config, workdir)`: state, jitted steps, the loop, evaluation,
checkpoints and metrics.

The train step is a pure function `(state, batch, rng) -> (state, metrics)`, jitted once over
a device mesh (batch split on `data`, parameters replicated) with the state donated. The loop
never waits on the device except to log: it dispatches step N before it reads step N-1's
metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from reformer import checkpoints, data, sharding
from reformer.config import ConfigError, validate
from reformer.metrics import MetricsWriter, log, progress_line
from reformer.model import ModelConfig, ReformerLM, retype_layers
from reformer.optim import make_optimizer, make_schedule


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def make_model(config: ml_collections.ConfigDict) -> ReformerLM:
    return ReformerLM(ModelConfig.from_config(config.model))


def init_params(model: ReformerLM, rng: jax.Array, batch_size: int, seq_len: int):
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    return model.init({"params": rng, "hash": rng}, tokens)["params"]


def make_init_state(config: ml_collections.ConfigDict, model: ReformerLM, tx):
    """`key -> TrainState` of fresh parameters and optimizer state."""

    def init_state(key):
        params = init_params(model, key, 1, config.data.seq_len)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init_state


def abstract_state(config: ml_collections.ConfigDict, model: ReformerLM, tx, mesh):
    """The train state's shapes and dtypes, replicated over `mesh`, without computing it."""
    rep = sharding.replicated(mesh)
    shapes = jax.eval_shape(make_init_state(config, model, tx), jax.random.key(0))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), shapes)


def make_eval_fn(config: ml_collections.ConfigDict, model: ReformerLM, abstract_params):
    """`(trained params, batch) -> metric sums` under `config.eval` (to be jitted).

    With `config.eval.attention_types` set, the trained weights run under other attention
    types (e.g. an LSH model with full shared-QK attention); a pattern whose parameters
    differ from the trained ones is a ConfigError. `eval.n_hashes` sets LSH's hash rounds.
    """
    n_hashes = config.eval.n_hashes or None
    train_types = tuple(config.model.attention_types)
    eval_types = tuple(config.eval.attention_types) or train_types
    if eval_types == train_types:
        return functools.partial(eval_step, model=model, n_hashes=n_hashes)
    eval_model = ReformerLM(dataclasses.replace(model.cfg, attention_types=eval_types))

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
    return lambda params, batch: eval_step(
        convert(params), batch, model=eval_model, n_hashes=n_hashes
    )


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    model: ReformerLM,
    tx: optax.GradientTransformation,
    schedule,
) -> tuple[TrainState, dict]:
    """One optimizer step. Dropout and hash keys are `fold_in(rng, step)`."""
    dropout_rng, hash_rng = jax.random.split(jax.random.fold_in(rng, state.step))

    def loss_fn(params):
        return model.apply(
            {"params": params},
            batch["tokens"],
            deterministic=False,
            weights_BxL=batch["weights"],
            rngs={"dropout": dropout_rng, "hash": hash_rng},
        )

    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **sums,
        "grad_norm": optax.tree_utils.tree_norm(grads),
        "learning_rate": schedule(state.step),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model: ReformerLM, n_hashes: int | None) -> dict:
    """Sums of loss, correct predictions and weights over one batch (no dropout)."""
    return model.apply(
        {"params": params},
        batch["tokens"],
        deterministic=True,
        n_hashes=n_hashes,
        weights_BxL=batch["weights"],
        rngs={"hash": jax.random.key(0)},
    )[1]


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
    return out


def _check_finite(metrics: list[dict], step: int) -> None:
    losses = jax.device_get([(m["loss_sum"], m["grad_norm"]) for m in metrics])
    if not all(math.isfinite(float(v)) for pair in losses for v in pair):
        raise FloatingPointError(
            f"training diverged: non-finite loss or gradient norm by step {step}. Lower "
            "optimizer.learning_rate or raise optimizer.warmup_steps; the last good "
            "checkpoint is kept."
        )


def _prepare_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir!r} is not writable: {e}") from e


class _StopRequested:
    """Turns SIGTERM (preemption) into a flag the loop checks: save, then exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: no signal handling.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log("SIGTERM received: saving a checkpoint and stopping.")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to `config.train.num_steps`, resuming from the workdir's latest checkpoint.

    Returns the last evaluation's metrics ({} when the run had already finished).
    """
    validate(config, num_devices=jax.device_count())
    _prepare_workdir(workdir)
    checkpoints.check_config_matches(workdir, config)
    is_main = jax.process_index() == 0

    mesh = sharding.make_mesh()
    model = make_model(config)
    tx = make_optimizer(config.optimizer)
    schedule = make_schedule(config.optimizer)
    rng = jax.random.key(config.train.seed)
    init_rng, step_rng = jax.random.split(rng)

    init_state = make_init_state(config, model, tx)

    # Shardings are derived from the state's shapes; parameters are born where they live.
    abstract = abstract_state(config, model, tx, mesh)
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
    batch_sharding = sharding.batch_sharded(mesh)
    rep = sharding.replicated(mesh)

    manager = checkpoints.make_manager(workdir, config.train.keep_checkpoints)
    stream = data.make_train_stream(config)
    latest = manager.latest_step()
    if latest is not None:
        state, data_state = checkpoints.restore(manager, latest, abstract)
        try:
            stream.set_state(data_state)
        except ValueError as e:
            raise ConfigError(f"cannot resume the data stream from {workdir}: {e}") from e
        log(f"Resumed from {workdir} at step {latest}.")
    else:
        state = jax.jit(init_state, out_shardings=state_sharding)(init_rng)
        log(f"Starting from scratch in {workdir}.")
    if is_main:
        checkpoints.write_config(workdir, config)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"Model: {n_params:,} parameters; {jax.device_count()} device(s) "
        f"({jax.devices()[0].platform}); mesh {dict(mesh.shape)}."
    )

    p_train_step = jax.jit(
        functools.partial(train_step, model=model, tx=tx, schedule=schedule),
        in_shardings=(state_sharding, batch_sharding, rep),
        out_shardings=(state_sharding, rep),
        donate_argnums=(0,),
    )
    p_eval_step = jax.jit(
        make_eval_fn(config, model, abstract.params),
        in_shardings=(state_sharding.params, batch_sharding),
        out_shardings=rep,
    )
    eval_batches = data.make_eval_batches(config)

    writer = MetricsWriter(workdir, enabled=is_main)
    t = config.train
    step = int(state.step)
    tokens_per_step = t.batch_size * config.data.seq_len
    last_eval: dict = {}

    def run_eval(step: int) -> dict:
        result = evaluate(p_eval_step, state.params, mesh, eval_batches)
        record = {"step": step, "split": "eval", **result}
        record.update(eval_settings(config))
        writer.write(record)
        log(
            f"eval  step {step:>7d} | loss {result['loss']:.4f} | "
            f"bits/tok {result['bits_per_token']:.4f} | acc {result['accuracy']:.4f}"
        )
        return record

    pending: list[dict] = []  # Device metrics of steps not yet logged.
    ready: tuple[int, list[dict], float, int] | None = None  # A log interval to write.
    interval_start, interval_first_step = time.time(), step

    def write_train_record(
        end_step: int, metrics: list[dict], seconds: float, n_steps: int
    ) -> None:
        host = jax.device_get(metrics)
        sums = {
            k: sum(float(m[k]) for m in host) for k in ("loss_sum", "correct_sum", "weight_sum")
        }
        _check_finite(host, end_step)
        result = summarize(sums)
        sps = n_steps / max(seconds, 1e-9)
        record = {
            "step": end_step,
            "split": "train",
            **result,
            "grad_norm": float(host[-1]["grad_norm"]),
            "learning_rate": float(host[-1]["learning_rate"]),
            "steps_per_sec": sps,
            "tokens_per_sec": sps * tokens_per_step,
        }
        writer.write(record)
        log(progress_line(record, t.num_steps))

    if step >= t.num_steps:
        log(f"Already at step {step} >= train.num_steps={t.num_steps}; nothing to train.")
    with _StopRequested() as stop:
        while step < t.num_steps:
            batch = sharding.global_batch(mesh, next(stream))
            state, metrics = p_train_step(state, batch, step_rng)
            step += 1
            pending.append(metrics)
            if ready is not None:  # Step N is dispatched; now read the interval before it.
                write_train_record(*ready)
                ready = None
            if step % t.log_every == 0 or step == t.num_steps:
                now = time.time()
                ready = (step, pending, now - interval_start, step - interval_first_step)
                pending, interval_start, interval_first_step = [], now, step
            done = step == t.num_steps or stop.requested
            evaluate_now = (t.eval_every and step % t.eval_every == 0) or step == t.num_steps
            save_now = step % t.checkpoint_every == 0 or done
            if ready is not None and (evaluate_now or save_now):
                write_train_record(*ready)  # Never save a state whose metrics were not checked.
                ready = None
            paused = time.time()
            if evaluate_now:
                last_eval = run_eval(step)
            if save_now:
                _check_finite(pending, step)
                checkpoints.save(manager, step, state, stream.get_state())
            interval_start += time.time() - paused  # Speed counts training steps only.
            if stop.requested:
                break
        if ready is not None:
            write_train_record(*ready)
    manager.wait_until_finished()
    manager.close()
    writer.close()
    return last_eval
