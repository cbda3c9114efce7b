"""`train_and_evaluate(config, workdir)`: the training loop, evaluation, checkpoints and
metrics, on one process or many.

The step functions live in `reformer/training/steps.py`; this file runs them. The train step is
jitted once over the `("data", "fsdp")` mesh with the state donated. The loop never waits on
the device except to log: it dispatches step N before it reads step N-1's metrics.
"""

from __future__ import annotations

import functools
import time

import jax
import ml_collections

from reformer import data, storage
from reformer.config.schema import ConfigError, validate
from reformer.training import checkpoints, sharding
from reformer.training.metrics import MetricsWriter, log, progress_line
from reformer.training.optimizer import make_optimizer
from reformer.training.preemption import StopRequests

# The step functions, re-exported: scripts and tests use them as `trainer.<name>`.
from reformer.training.steps import (  # noqa: F401
    TrainState,
    abstract_state,
    compile_train_step,
    eval_settings,
    eval_step,
    evaluate,
    init_params,
    jit_train_step,
    make_eval_fn,
    make_init_state,
    make_model,
    state_from_params,
    summarize,
    train_step,
)


def _check_finite(metrics: list[tuple[int, dict]]) -> None:
    """Raises naming the first step whose loss, gradient or new state is not finite
    (`metrics`: (step, metrics) pairs, on the device or already fetched)."""
    host = jax.device_get([(step, m["finite"]) for step, m in metrics])
    bad = [step for step, ok in host if not bool(ok)]
    if bad:
        raise FloatingPointError(
            f"training diverged: non-finite loss, gradient or parameters at step {bad[0]}. "
            "Lower optimizer.learning_rate or raise optimizer.warmup_steps; the last good "
            "checkpoint is kept."
        )


def _describe_process(mesh) -> str:
    devices = jax.local_devices()
    return (
        f"Process {jax.process_index()} of {jax.process_count()}: {len(devices)} local "
        f"device(s) of {jax.device_count()} ({devices[0].platform}); mesh {dict(mesh.shape)}."
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to `config.train.num_steps`, resuming from the workdir's latest checkpoint.

    Returns the last evaluation's metrics ({} when the run had already finished).
    """
    validate(config, num_devices=jax.device_count())
    storage.prepare_dir(workdir, "--workdir", f".write_test.{jax.process_index()}")
    checkpoints.check_config_matches(workdir, config)
    is_main = jax.process_index() == 0
    t = config.train

    mesh = sharding.make_mesh(config.mesh)
    log(_describe_process(mesh))
    model = make_model(config)
    tx = make_optimizer(config.optimizer)
    init_rng, step_rng = jax.random.split(jax.random.key(t.seed))

    # Shardings are derived from the state's shapes; parameters are born where they live.
    abstract = abstract_state(config, model, tx, mesh)
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
    batch_sharding = sharding.batch_sharded(mesh)
    rep = sharding.replicated(mesh)

    manager = checkpoints.make_manager(workdir, t.keep_checkpoints)
    rows_fn = functools.partial(sharding.process_rows, mesh)
    stream = data.make_train_stream(
        config, rows=rows_fn(t.batch_size), rows_fn=rows_fn, workdir=workdir
    )
    restored = checkpoints.restore_latest(manager, abstract, workdir)
    if restored is not None:
        latest, state, data_state = restored
        try:
            stream.set_state(data_state)
        except ValueError as e:
            raise ConfigError(f"cannot resume the data stream from {workdir}: {e}") from e
        log(f"Resumed from {workdir} at step {latest}.")
    elif t.init_from:
        params, from_step = checkpoints.restore_params(
            t.init_from,
            t.keep_checkpoints,
            abstract.params,
            f"initialize {workdir} from (train.init_from)",
            check_shapes=True,
        )
        state = jax.jit(state_from_params(tx), out_shardings=state_sharding)(params)
        log(
            f"Starting in {workdir} from the parameters of {t.init_from} (its step "
            f"{from_step}), with fresh optimizer state at step 0."
        )
    else:
        state = jax.jit(make_init_state(config, model, tx), out_shardings=state_sharding)(init_rng)
        log(f"Starting from scratch in {workdir}.")
    if is_main:
        checkpoints.write_config(workdir, config)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"Model: {n_params:,} parameters; {jax.device_count()} device(s) "
        f"({jax.devices()[0].platform}); mesh {dict(mesh.shape)}."
    )

    p_train_step = jit_train_step(config, model, tx, mesh, state_sharding)
    p_eval_step = jax.jit(
        make_eval_fn(config, model, abstract.params),
        in_shardings=(state_sharding.params, batch_sharding),
        out_shardings=rep,
    )
    eval_batches = data.make_eval_batches(
        config, rows=rows_fn(config.eval.batch_size), rows_fn=rows_fn, workdir=workdir
    )

    step = int(state.step)
    writer = MetricsWriter(workdir, enabled=is_main, start_step=step)
    last_eval: dict = {}

    def run_eval(step: int) -> dict:
        result = evaluate(p_eval_step, state.params, mesh, eval_batches)
        record = {"step": step, "split": "eval", **result}
        record.update(eval_settings(config))
        writer.write(record)
        if is_main:
            log(
                f"eval  step {step:>7d} | loss {result['loss']:.4f} | "
                f"bits/tok {result['bits_per_token']:.4f} | acc {result['accuracy']:.4f}"
            )
        return record

    pending: list[tuple[int, dict]] = []  # (step, device metrics) of steps not yet logged.
    ready: tuple[int, list, int, int] | None = None  # A log interval to write.
    # Steps run asynchronously: an interval ends when its last step's metrics arrive on the
    # host, not when that step is dispatched. Evaluations and saves are not training time.
    clock = {"last_done": time.time(), "paused": 0.0}
    interval_first_step, interval_tokens = step, 0
    # The train step compiled for each batch shape met (one, or one per length bucket).
    compiled_steps: dict[tuple, object] = {}

    def write_train_record(end_step: int, metrics: list, n_steps: int, tokens: int) -> None:
        host_metrics = jax.device_get(metrics)  # One transfer for the whole interval.
        now = time.time()
        seconds = now - clock["last_done"] - clock["paused"]
        clock["last_done"], clock["paused"] = now, 0.0
        _check_finite(host_metrics)
        host = [m for _, m in host_metrics]
        sums = {
            k: sum(float(m[k]) for m in host) for k in ("loss_sum", "correct_sum", "weight_sum")
        }
        sps = n_steps / max(seconds, 1e-9)
        record = {
            "step": end_step,
            "split": "train",
            **summarize(sums),
            "grad_norm": float(host[-1]["grad_norm"]),
            "learning_rate": float(host[-1]["learning_rate"]),
            "steps_per_sec": sps,
            "tokens_per_sec": tokens / max(seconds, 1e-9),
        }
        writer.write(record)
        if is_main:
            log(progress_line(record, t.num_steps))

    if step >= t.num_steps:
        log(f"Already at step {step} >= train.num_steps={t.num_steps}; nothing to train.")
    # The handlers stay installed until the last save is written: a SIGTERM then only
    # asks for what is already happening.
    with StopRequests() as stop:
        try:
            while step < t.num_steps:
                batch = sharding.global_batch(mesh, next(stream))
                shape = tuple(sorted((k, v.shape) for k, v in batch.items()))
                if shape not in compiled_steps:
                    compiled_steps[shape], compile_s = compile_train_step(
                        p_train_step, state, batch, step_rng
                    )
                    clock["paused"] += compile_s
                    if is_main:
                        rows, length = batch["tokens"].shape[:2]
                        of = f" for batches of {rows} x {length}" if len(compiled_steps) > 1 else ""
                        log(f"Compiled the train step{of} in {compile_s:.1f} s.")
                state, metrics = compiled_steps[shape](state, batch, step_rng)
                interval_tokens += batch["tokens"].size
                step += 1
                pending.append((step, metrics))
                if ready is not None:  # Step N is dispatched; now read the interval before it.
                    write_train_record(*ready)
                    ready = None
                stopping = stop.should_stop(step)
                done = step == t.num_steps or stopping
                evaluate_now = (t.eval_every and step % t.eval_every == 0) or step == t.num_steps
                save_now = step % t.checkpoint_every == 0 or done
                if step % t.log_every == 0 or step == t.num_steps:
                    ready = (step, pending, step - interval_first_step, interval_tokens)
                    pending, interval_first_step, interval_tokens = [], step, 0
                if ready is not None and (evaluate_now or save_now):
                    write_train_record(*ready)  # Never save a state whose metrics are unchecked.
                    ready = None
                if evaluate_now or save_now:
                    # Both wait for the state; wait here, so that the steps still running
                    # count as training time, not as the pause below.
                    jax.block_until_ready(state)
                paused = time.time()
                if evaluate_now:
                    last_eval = run_eval(step)
                if save_now:
                    _check_finite(pending)
                    checkpoints.save(manager, step, state, stream.get_state())
                clock["paused"] += time.time() - paused  # Speed counts training steps only.
                if stopping:
                    log(f"Stopped at step {step}; checkpoint saved. Rerun the command to resume.")
                    break
            if ready is not None:
                write_train_record(*ready)
        finally:  # On any error too: finish pending saves, close the manager and writers.
            manager.wait_until_finished()
            manager.close()
            writer.close()
    return last_eval
