"""Checkpoints: train state + data-stream position, with orbax `CheckpointManager`.

A checkpoint is written under `WORKDIR/checkpoints/<step>/` with two items: `state` (the
train state pytree) and `data` (the JSON position of the training stream). The model part
of the config is written beside them (`WORKDIR/config.json`), so that a run whose model no
longer matches the checkpoint stops with a clear error instead of overwriting it.
"""

from __future__ import annotations

import json
import os

import ml_collections
import orbax.checkpoint as ocp

from reformer.config import ConfigError

CONFIG_FILE = "config.json"


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager | None:
    """The workdir's manager; None when `create` is False and there are no checkpoints."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not create and not os.path.isdir(directory):
        return None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, enable_async_checkpointing=True
    )
    return ocp.CheckpointManager(
        directory,
        options=options,
        item_names=("state", "data"),
    )


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict) -> None:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        ),
        force=True,
    )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
    """Restores (state, data_state) of `step` into the shardings of `abstract_state`."""
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["data"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def check_config_matches(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a checkpoint written by a model of a different shape or kind."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    old = _flatten(saved.get("model", {}), "model.")
    new = _flatten(json.loads(config.model.to_json()), "model.")
    diff = [
        f"config.{k}: checkpoint has {old[k]!r}, this run has {new.get(k)!r}"
        for k in sorted(old)
        if old[k] != new.get(k)
    ]
    if diff:
        raise ConfigError(
            f"workdir {workdir} holds a checkpoint of a different model; refusing to "
            "resume or overwrite it. Use a new --workdir or the original settings:\n  "
            + "\n  ".join(diff)
        )


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))
