"""`train(config, workdir, make_eval_fn)`: the training loop, on one process or many.

`set_up` builds what a run needs (mesh, model, optimizer, state restored or created, data
stream, checkpoint manager, the jitted steps); `train` runs the steps, and the named pieces
of a step's end (`_Intervals` for the log, `_Clock` for training time, `_evaluate`,
checkpoints.save) decide what else happens. The train step is jitted once over the
`("data", "fsdp")` mesh with the state donated, and the loop never waits on the device
except to log: it dispatches step N before it reads step N-1's metrics. The evaluation
function comes from the caller (`reformer.train.train_and_evaluate` passes
`evaluation.scoring.make_eval_fn`), so training imports nothing of decoding.

A run holds its workdir's lock from before it reads anything there until it ends
(`workdir_lock`: one writer per workdir). In a `gs://` workdir an error that storage caused
ends the run with one line naming the last complete checkpoint (`storage_faults`). An
evaluation that fails keeps the checkpoint of its step before the error is reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from reformer import data, storage, storage_faults
from reformer.config.validation import validate
from reformer.console import log
from reformer.errors import ConfigError
from reformer.training import checkpoints, sharding, workdir_lock
from reformer.training.metrics import MetricsWriter, eval_settings, progress_line, summarize
from reformer.training.optimizer import make_optimizer
from reformer.training.preemption import StopRequests
from reformer.training.state import abstract_state, make_init_state, make_model, state_from_params
from reformer.training.steps import compile_train_step, evaluate, jit_train_step

# `(config, model, abstract params) -> (params, batch) -> metric sums`, to be jitted.
MakeEvalFn = Callable[[ml_collections.ConfigDict, Any, Any], Callable]


@dataclasses.dataclass
class Run:
    """What `set_up` builds for `train`."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    state: Any
    stream: Any
    manager: Any
    train_step: Any  # jitted, compiled per batch shape by the loop
    eval_step: Any  # jitted
    eval_batches: Any  # a sequence of host batches
    step_rng: jax.Array
    is_main: bool
    saves: checkpoints.Saves
    lock: workdir_lock.WorkdirLock | None = None  # process 0's; None in the others


class EvaluationFailed(ConfigError):
    """An evaluation during training failed; the checkpoint of its step is kept."""


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


def _initial_state(config, workdir, manager, stream, abstract, tx, model, init_rng):
    """`(state, restored step or None)`: the workdir's latest checkpoint (with the data
    stream's position), else `train.init_from`'s parameters with fresh optimizer state,
    else new."""
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
    restored = checkpoints.restore_latest(manager, abstract, workdir)
    if restored is not None:
        latest, state, data_state = restored
        try:
            stream.set_state(data_state)
        except ValueError as e:
            raise ConfigError(f"cannot resume the data stream from {workdir}: {e}") from e
        log(f"Resumed from {workdir} at step {latest}.")
        return state, latest
    init_from = config.train.init_from
    if init_from:
        params, from_step = checkpoints.restore_params(
            init_from,
            config.train.keep_checkpoints,
            abstract.params,
            f"initialize {workdir} from (train.init_from)",
            check_shapes=True,
        )
        log(
            f"Starting in {workdir} from the parameters of {init_from} (its step "
            f"{from_step}), with fresh optimizer state at step 0."
        )
        return jax.jit(state_from_params(tx), out_shardings=state_sharding)(params), None
    log(f"Starting from scratch in {workdir}.")
    init = jax.jit(make_init_state(config, model, tx), out_shardings=state_sharding)
    return init(init_rng), None


def set_up(config: ml_collections.ConfigDict, workdir: str, make_eval_fn: MakeEvalFn) -> Run:
    """Builds the mesh, the model, the state (restored, initialized from `train.init_from`,
    or new), the data, the checkpoint manager and the jitted steps (the config and the
    workdir are checked first, by `train`)."""
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
    manager = checkpoints.make_manager(workdir, t.keep_checkpoints)
    rows_fn = functools.partial(sharding.process_rows, mesh)
    stream = data.make_train_stream(
        config, rows=rows_fn(t.batch_size), rows_fn=rows_fn, workdir=workdir
    )
    state, restored = _initial_state(
        config, workdir, manager, stream, abstract, tx, model, init_rng
    )
    if is_main:
        checkpoints.write_config(workdir, config)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"Model: {n_params:,} parameters; {jax.device_count()} device(s) "
        f"({jax.devices()[0].platform}); mesh {dict(mesh.shape)}."
    )
    eval_step = jax.jit(
        make_eval_fn(config, model, abstract.params),
        in_shardings=(state_sharding.params, sharding.batch_sharded(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
    eval_batches = data.make_eval_batches(
        config, rows=rows_fn(config.eval.batch_size), rows_fn=rows_fn, workdir=workdir
    )
    train_step = jit_train_step(config, model, tx, mesh, state_sharding)
    return Run(
        config, workdir, mesh, state, stream, manager, train_step, eval_step, eval_batches,
        step_rng, is_main, checkpoints.Saves(workdir, manager, restored),
    )  # fmt: skip


class _Clock:
    """Training seconds per log interval. Steps run asynchronously: an interval ends when
    its last step's metrics arrive on the host, not when that step is dispatched.
    Compilation, evaluations and saves are paused time, not training time."""

    def __init__(self):
        self.last_done, self.paused = time.time(), 0.0

    @contextlib.contextmanager
    def pause(self):
        start = time.time()
        try:
            yield
        finally:
            self.paused += time.time() - start

    def lap(self) -> float:
        """Training seconds since the last lap."""
        now = time.time()
        seconds = now - self.last_done - self.paused
        self.last_done, self.paused = now, 0.0
        return seconds


class _Intervals:
    """The log intervals' metrics: steps' device metrics collect until an interval closes;
    a closed interval is written (one transfer) after the next step is dispatched, or before
    an evaluation or a save, so that no state is saved with unchecked metrics."""

    def __init__(self, run: Run, writer: MetricsWriter, step: int):
        self.run, self.writer = run, writer
        self.pending: list[tuple[int, dict]] = []  # (step, metrics) of steps not yet logged
        self.ready: tuple | None = None  # a closed interval not yet written
        self.first_step, self.tokens = step, 0
        self.clock = _Clock()

    def add(self, step: int, metrics: dict, tokens: int) -> None:
        self.pending.append((step, metrics))
        self.tokens += tokens

    def close(self, step: int) -> None:
        self.ready = (step, self.pending, step - self.first_step, self.tokens)
        self.pending, self.first_step, self.tokens = [], step, 0

    def write_ready(self) -> None:
        if self.ready is not None:
            self._write(*self.ready)
            self.ready = None

    def _write(self, end_step: int, metrics: list, n_steps: int, tokens: int) -> None:
        host_metrics = jax.device_get(metrics)  # One transfer for the whole interval.
        seconds = self.clock.lap()
        _check_finite(host_metrics)
        host = [m for _, m in host_metrics]
        sums = {
            k: sum(float(m[k]) for m in host) for k in ("loss_sum", "correct_sum", "weight_sum")
        }
        record = {
            "step": end_step,
            "split": "train",
            **summarize(sums),
            "grad_norm": float(host[-1]["grad_norm"]),
            "learning_rate": float(host[-1]["learning_rate"]),
            "steps_per_sec": n_steps / max(seconds, 1e-9),
            "tokens_per_sec": tokens / max(seconds, 1e-9),
        }
        self.writer.write(record)
        if self.run.is_main:
            log(progress_line(record, self.run.config.train.num_steps))


def _evaluate(run: Run, writer: MetricsWriter, step: int) -> dict:
    """Scores the current parameters on the evaluation batches; writes and logs the record."""
    result = evaluate(run.eval_step, run.state.params, run.mesh, run.eval_batches)
    record = {"step": step, "split": "eval", **result, **eval_settings(run.config)}
    writer.write(record)
    if run.is_main:
        log(
            f"eval  step {step:>7d} | loss {result['loss']:.4f} | "
            f"bits/tok {result['bits_per_token']:.4f} | acc {result['accuracy']:.4f}"
        )
    return record


def _save(run: Run, step: int, pending: list) -> None:
    """Saves the state of `step` once its metrics are known to be finite (`pending`: the
    steps not yet checked), after making sure the run still holds its workdir."""
    _check_finite(pending)
    if run.lock is not None:
        run.lock.confirm()
    checkpoints.save(run.manager, step, run.state, run.stream.get_state(), run.saves)


def _evaluate_keeping(run: Run, writer: MetricsWriter, step: int, pending: list) -> dict:
    """`_evaluate`; when the evaluation fails, the state of `step` is saved first, then the
    error is an EvaluationFailed in one line."""
    try:
        return _evaluate(run, writer, step)
    except Exception as e:
        if storage.is_remote(run.workdir) and storage_faults.is_fault(
            e, storage.bucket(run.workdir)
        ):
            raise
        _save(run, step, pending)
        raise EvaluationFailed(
            f"the evaluation at step {step} failed ({storage_faults.describe(e)}); the "
            f"checkpoint of step {step} is kept in {run.workdir}. Fix what the evaluation "
            "reads (config.eval, the evaluation data) and run the command again to resume "
            "from it, or set --config.train.eval_every=0 to train without evaluating."
        ) from e


def _compiled_step(run: Run, compiled: dict, batch: dict, clock: _Clock):
    """The train step compiled for this batch's shapes (one, or one per length bucket)."""
    shape = tuple(sorted((k, v.shape) for k, v in batch.items()))
    if shape not in compiled:
        compiled[shape], seconds = compile_train_step(
            run.train_step, run.state, batch, run.step_rng
        )
        clock.paused += seconds
        if run.is_main:
            rows, length = batch["tokens"].shape[:2]
            of = f" for batches of {rows} x {length}" if len(compiled) > 1 else ""
            log(f"Compiled the train step{of} in {seconds:.1f} s.")
    return compiled[shape]


def _steps(run: Run, writer: MetricsWriter, stop: StopRequests) -> dict:
    """Steps to `train.num_steps` (or a stop request); returns the last evaluation."""
    t = run.config.train
    step, last_eval, compiled = int(run.state.step), {}, {}
    intervals = _Intervals(run, writer, step)
    while step < t.num_steps:
        batch = sharding.global_batch(run.mesh, next(run.stream))
        step_fn = _compiled_step(run, compiled, batch, intervals.clock)
        run.state, metrics = step_fn(run.state, batch, run.step_rng)
        step += 1
        intervals.add(step, metrics, batch["tokens"].size)
        intervals.write_ready()  # Step N is dispatched; now read the interval before it.
        stopping = stop.should_stop(step)
        done = step == t.num_steps or stopping
        evaluate_now = (t.eval_every and step % t.eval_every == 0) or step == t.num_steps
        save_now = step % t.checkpoint_every == 0 or done
        if step % t.log_every == 0 or step == t.num_steps:
            intervals.close(step)
        if evaluate_now or save_now:
            intervals.write_ready()  # Never save a state whose metrics are unchecked.
            # Both wait for the state; wait here, so that the steps still running count as
            # training time, not as the pause below.
            jax.block_until_ready(run.state)
        with intervals.clock.pause():  # Speed counts training steps only.
            if evaluate_now:
                last_eval = _evaluate_keeping(run, writer, step, intervals.pending)
            if save_now:
                _save(run, step, intervals.pending)
        if stopping:
            log(f"Stopped at step {step}; checkpoint saved. Rerun the command to resume.")
            break
    intervals.write_ready()
    return last_eval


def train(config: ml_collections.ConfigDict, workdir: str, make_eval_fn: MakeEvalFn) -> dict:
    """Trains to `config.train.num_steps`, resuming from the workdir's latest checkpoint,
    evaluating with the function `make_eval_fn` builds. Returns the last evaluation's
    metrics ({} when the run had already finished). The config and the workdir are checked
    first; the workdir's lock is held from then on (a run holding it refuses this one)."""
    validate(config, num_devices=jax.device_count())
    storage.prepare_dir(workdir, "--workdir", f".write_test.{jax.process_index()}")
    storage_faults.set_limit(config.train.storage_timeout)
    with workdir_lock.hold(workdir, config.train.lock_renew_every) as lock:
        storage_faults.set_note(lambda: f"Restart to resume from the checkpoints in {workdir}.")
        try:
            with _storage_guard(workdir):
                run = set_up(config, workdir, make_eval_fn)
                run.lock = lock
                storage_faults.set_note(run.saves.note)
                return _run(run)
        finally:
            storage_faults.set_note(None)
            storage_faults.forget(workdir)


def _storage_guard(workdir: str):
    """In a `gs://` workdir: an error that storage caused ends the run in one line."""
    if not storage.is_remote(workdir):
        return contextlib.nullcontext()
    return storage_faults.stop_on_fault("training in", workdir, storage.bucket(workdir))


def _run(run: Run) -> dict:
    """The steps, with the stop handlers installed; everything closed on the way out."""
    config, workdir = run.config, run.workdir
    step = int(run.state.step)
    writer = MetricsWriter(workdir, enabled=run.is_main, start_step=step)
    if step >= config.train.num_steps:
        log(
            f"Already at step {step} >= train.num_steps={config.train.num_steps}; nothing to train."
        )
    # The handlers stay installed until the last save is written: a SIGTERM then only asks
    # for what is already happening.
    with StopRequests() as stop:
        try:
            return _steps(run, writer, stop)
        finally:  # On any error too: finish pending saves, close the manager and writers.
            checkpoints.finish(run.manager)
            writer.close()
