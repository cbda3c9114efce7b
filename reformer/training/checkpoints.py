"""Checkpoints: train state + data-stream position, with orbax `CheckpointManager`.

A checkpoint is written under `WORKDIR/checkpoints/<step>/` with two items: `state` (the
train state pytree) and `data` (the JSON position of the training stream). The model part
of the config is written beside them (`WORKDIR/config.json`), so that a run whose model no
longer matches the checkpoint stops with a clear error instead of overwriting it. WORKDIR may
be local or `gs://BUCKET/...` (`reformer/storage.py`).

After a hard kill: on a local disk orbax writes a step into
`<step>.orbax-checkpoint-tmp-*` and renames it when complete; on Cloud Storage, which cannot
rename, it writes `<step>/` in place and marks it complete with a last object,
`commit_success.txt`. Either way a half-written step is never listed (`restore_latest` warns
about it, and orbax replaces it when that step is saved again). A listed step that cannot be
read (a truncated file) is moved to `WORKDIR/corrupt_checkpoints/` with a warning (on Cloud
Storage: copied, then deleted once the copy is complete) and the step before it is restored.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from reformer import storage, storage_faults
from reformer.config.legacy import migrate
from reformer.config.schema import resume_values
from reformer.console import log
from reformer.errors import ConfigError

CONFIG_FILE = "config.json"
CORRUPT_DIR = "corrupt_checkpoints"
# What TensorStore logs about finding credentials on its first Cloud Storage request.
CREDENTIAL_LOGS = ("google_auth_provider.cc", "gce_auth_provider.cc")
_credentials_found: list[bool] = []  # (TensorStore looks for credentials once per process)


def watched(what: str, directory) -> contextlib.AbstractContextManager:
    """The block registered with the storage watchdog when `directory` is on Cloud Storage."""
    if storage.is_remote(directory):
        return storage_faults.watch(what, str(directory), storage.bucket(directory))
    return contextlib.nullcontext()


def _quiet_credential_logs(directory: str) -> None:
    """Makes TensorStore's first Cloud Storage request of the process (a read of an absent
    object) with stderr captured: TensorStore logs there, at INFO level, how it found
    credentials ("Using GOOGLE_AUTH_TOKEN_FOR_TESTING", "Running on GCE ..."), since absl
    logging is not set up in Python processes. Other captured lines are written back."""
    if not storage.is_remote(directory) or _credentials_found:
        return
    import tensorstore as ts

    _credentials_found.append(True)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            kvstore = ts.KvStore.open({"driver": "gcs", "bucket": storage.bucket(directory)})
            kvstore.result().read(".reformer-no-such-object").result(timeout=10)
        except Exception:  # noqa: BLE001  (a failure shows at the first real request)
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().decode(errors="replace").splitlines(keepends=True)
    rest = [line for line in lines if not any(name in line for name in CREDENTIAL_LOGS)]
    if rest:
        sys.stderr.write("".join(rest))
        sys.stderr.flush()


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager | None:
    """The workdir's manager; None when `create` is False and there are no checkpoints."""
    directory = storage.join(workdir, "checkpoints")
    if not create and not storage.isdir(directory):
        return None
    _quiet_credential_logs(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, enable_async_checkpointing=True
    )
    with watched("listing the checkpoints in", directory):
        return ocp.CheckpointManager(
            storage.path(directory),
            options=options,
            item_names=("state", "data"),
        )


class Saves:
    """The newest complete checkpoint of the workdir as this process knows it, without
    reading storage: for the line that ends a run whose storage stopped answering."""

    def __init__(self, workdir: str, manager: ocp.CheckpointManager, step: int | None):
        self.workdir, self.manager, self.step = workdir, manager, step
        self.pending: int | None = None  # a save that may still be running
        self._mutex = threading.Lock()  # (`complete` runs on the storage watchdog's thread)

    def started(self, step: int) -> None:
        """After `manager.save(step)` returned: orbax starts a save only once the one before
        it is complete."""
        with self._mutex:
            if self.pending is not None:
                self.step = self.pending
            self.pending = step

    def complete(self, step: int) -> bool:
        """Whether the save of `step` is complete (or a later one is)."""
        with self._mutex:
            if self.pending is not None and not self.manager.is_saving_in_progress():
                self.step, self.pending = self.pending, None
            return self.step is not None and self.step >= step

    def note(self) -> str:
        self.complete(0)
        if self.step is None:
            return f"No complete checkpoint in {self.workdir} yet. Restart to start again."
        return f"Last complete checkpoint: step {self.step} in {self.workdir}. Restart to resume."


def save(
    manager: ocp.CheckpointManager, step: int, state, data_state: dict, saves: Saves | None = None
) -> None:
    """Starts saving `step` (orbax writes it in the background); on Cloud Storage the
    background write is watched until it is complete."""
    directory = str(manager.directory)
    with watched(f"starting checkpoint {step} in", directory):
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=True,
        )
    if saves is None:
        saves = Saves("", manager, None)
    saves.started(step)
    if storage.is_remote(directory):
        storage_faults.watch_until(
            f"writing checkpoint {step} to",
            directory,
            storage.bucket(directory),
            done=lambda: saves.complete(step),
        )


def finish(manager: ocp.CheckpointManager) -> None:
    """Waits for the saves still running, then closes the manager."""
    with watched("finishing the checkpoint writes in", manager.directory):
        manager.wait_until_finished()
        manager.close()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
    """Restores (state, data_state) of `step` into the shardings of `abstract_state`.

    An `abstract_state` of the form `{"params": abstract_params}` reads only the
    parameters (no optimizer state, no data position: `data_state` is None).
    """
    with watched(f"reading checkpoint {step} from", manager.directory):
        return _restore(manager, step, abstract_state)


def _restore(manager: ocp.CheckpointManager, step: int, abstract_state):
    if isinstance(abstract_state, dict) and set(abstract_state) == {"params"}:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract_state,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
                    partial_restore=True,
                )
            ),
        )
        return restored["state"], None
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["data"]


def _all_processes(ok: bool) -> bool:
    """True when `ok` holds in every process (a cross-process AND)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def incomplete_dirs(manager: ocp.CheckpointManager) -> list[str]:
    """Directories of saves that never finished (a process killed while writing): temporary
    directories on a local disk, steps without their commit marker on Cloud Storage."""
    directory = manager.directory
    return [
        name
        for name in storage.listdir(directory)
        if ".orbax-checkpoint-tmp" in name
        or (
            storage.is_remote(directory)
            and name.isdigit()
            and not storage.exists(storage.join(directory, name, _commit_file()))
        )
    ]


def _commit_file() -> str:
    """The object orbax writes last into a complete step on Cloud Storage."""
    from orbax.checkpoint._src.path import atomicity_types

    return atomicity_types.COMMIT_SUCCESS_FILE


def _is_structure_mismatch(error: Exception) -> bool:
    """A checkpoint that reads fine but holds another tree than this run's state."""
    return "tree structures do not match" in str(error)


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state, workdir: str, move_corrupt: bool = True
):
    """`(step, state, data_state)` of the newest checkpoint that every process can read, or
    None when there is none.

    Newer steps that fail to restore in any process (e.g. a truncated file) are skipped with
    a warning and, once an older step has been restored, moved to
    `WORKDIR/corrupt_checkpoints/` (never deleted; with `move_corrupt=False` left in place).
    When no step can be restored nothing is moved and a ConfigError says why; a checkpoint
    of another optimizer setup is a ConfigError too, never taken for a corrupt one.
    """
    for name in incomplete_dirs(manager):
        log(f"WARNING: ignoring {name} in {manager.directory}: a save that did not finish.")
    failed: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        error = None
        try:
            state, data_state = restore(manager, step, abstract_state)
        except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise many types)
            error = e
        if error is not None and _storage_failed(error, manager):
            raise error  # Not a corrupt checkpoint: storage did not answer.
        if error is not None and _is_structure_mismatch(error):
            if set(_saved_state(manager, step)) == {"params"}:
                raise ConfigError(
                    f"checkpoint {step} in {workdir} holds parameters only (as "
                    "scripts/convert_hf_checkpoint.py writes them), no optimizer state to resume "
                    f"from: start a run from it with --config.train.init_from={workdir} and a "
                    "new --workdir"
                ) from error
            raise ConfigError(
                f"checkpoint {step} in {workdir} holds a train state of another structure than "
                "this run's (did optimizer.name, optimizer.clip_norm = 0 or "
                "optimizer.weight_decay = 0 change?). Use the original settings or a new "
                f"--workdir. ({str(error).splitlines()[0][:200]})"
            ) from error
        if _all_processes(error is None):
            _set_aside(manager, workdir, [s for s, _ in failed], move_corrupt)
            return step, state, data_state
        reason = (
            f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            if error
            else "another process could not read it"
        )
        log(f"WARNING: checkpoint {step} cannot be restored ({reason}); trying the one before it.")
        failed.append((step, reason))
    if failed:
        raise ConfigError(
            f"no checkpoint in {manager.directory} can be restored; nothing was moved or "
            "deleted. Move the checkpoints away to start from scratch, or fix what is "
            "wrong:\n  " + "\n  ".join(f"step {s}: {r}" for s, r in failed)
        )
    return None


def _storage_failed(error: Exception, manager: ocp.CheckpointManager) -> bool:
    directory = str(manager.directory)
    return storage.is_remote(directory) and storage_faults.is_fault(
        error, storage.bucket(directory)
    )


def _saved_state(manager: ocp.CheckpointManager, step: int) -> dict:
    """The tree of array metadata (shapes, dtypes) of a checkpoint's train state."""
    saved = ocp.PyTreeCheckpointHandler().metadata(manager.directory / str(step) / "state")
    return dict(getattr(saved, "tree", saved))


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def param_mismatches(saved_params, abstract_params) -> list[str]:
    """What differs between a checkpoint's parameter tree (arrays or orbax metadata) and
    this model's: one line per missing, unexpected or differently shaped parameter."""
    saved, want = _flat_shapes(saved_params), _flat_shapes(abstract_params)
    lines = [
        f"{k}: not in the checkpoint (this model needs {want[k]})" for k in want if k not in saved
    ]
    lines += [
        f"{k}: in the checkpoint {saved[k]}, not in this model" for k in saved if k not in want
    ]
    lines += [
        f"{k}: checkpoint has shape {saved[k]}, this model needs {want[k]}"
        for k in want
        if k in saved and saved[k] != want[k]
    ]
    return lines


def restore_params(workdir: str, keep: int, abstract_params, purpose: str, check_shapes=False):
    """`(params, step)` of the newest readable checkpoint in `workdir`, parameters only (no
    optimizer state or data position needed), placed as `abstract_params` says.

    With `check_shapes` the checkpoint's parameter shapes are compared with the model's
    first, and every difference is named in one ConfigError. Raises a ConfigError when the
    workdir holds no checkpoint; `purpose` says what it was wanted for ("evaluate").
    """
    manager = make_manager(workdir, keep, create=False)
    restored = None
    try:
        if manager is not None and check_shapes and manager.latest_step() is not None:
            step = manager.latest_step()
            saved = _saved_state(manager, step)
            problems = param_mismatches(saved.get("params", {}), abstract_params)
            if problems:
                raise ConfigError(
                    f"the parameters of checkpoint {step} in {workdir} do not fit this model "
                    f"({purpose}):\n  "
                    + "\n  ".join(problems[:20])
                    + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
                )
        if manager is not None:
            restored = restore_latest(
                manager, {"params": abstract_params}, workdir, move_corrupt=False
            )
    finally:
        if manager is not None:
            manager.close()
    if restored is None:
        raise ConfigError(
            f"{workdir}: no checkpoint to {purpose}. Train first: python -m "
            f"reformer.train --config ... --workdir {workdir}"
        )
    step, state, _ = restored
    return state["params"], step


def _set_aside(manager: ocp.CheckpointManager, workdir: str, steps: list[int], move: bool):
    """Moves unreadable steps to `WORKDIR/corrupt_checkpoints/` (process 0), so that saving
    those steps again does not collide with them."""
    if not steps or not move:
        return
    for step in steps:
        target = storage.join(workdir, CORRUPT_DIR, f"{step}-{int(time.time())}")
        log(f"WARNING: moved the unreadable checkpoint {step} to {target}.")
        if jax.process_index() == 0:
            storage.move_tree(storage.join(manager.directory, str(step)), target)
    _barrier("reformer_set_aside_corrupt")
    manager.reload()


def check_config_matches(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a checkpoint written with other values of the fields a resumed run
    must keep (`Field.resume` in the config schema: the model's shape and kind, the
    optimizer state's structure)."""
    path = storage.join(workdir, CONFIG_FILE)
    if not storage.exists(path):
        return
    saved = json.loads(storage.read_text(path))
    migrate(saved)  # Workdirs written before a field was renamed resume under the new name.
    old = resume_values(saved)
    new = resume_values(json.loads(config.to_json()))
    diff = [
        f"config.{k}: checkpoint has {old[k]!r}, this run has {new.get(k)!r}"
        for k in old
        if old[k] != new.get(k)
    ]
    if diff:
        raise ConfigError(
            f"workdir {workdir} holds a checkpoint of a different model or optimizer; refusing to "
            "resume or overwrite it. Use a new --workdir or the original settings:\n  "
            + "\n  ".join(diff)
        )


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config.json` whole or not at all (`storage.write_text`)."""
    storage.write_text(storage.join(workdir, CONFIG_FILE), config.to_json(indent=2))
