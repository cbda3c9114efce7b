"""Config fields that were renamed or replaced, and their migration: config files and
saved workdirs (`config.json`) that still name them load as today's fields."""

from __future__ import annotations

import contextlib

import ml_collections


def _config_error(message: str) -> Exception:
    from reformer.config.schema import ConfigError  # config imports this module

    return ConfigError(message)


# Fields that were renamed or replaced. Config files and saved workdirs (`config.json`) that
# still name them load: `migrate` rewrites them into today's fields.
LEGACY_FIELDS = {
    "model.reversible": "model.residual ('reversible' for True, 'two_stream' for False)",
    "model.ff_chunk_size": "model.position_chunk_size (it chunks all position-wise work)",
}


def _migrate_model(model, unlocked) -> list[str]:
    """Rewrites the legacy fields of one `model` group (a dict or a ConfigDict) in place."""
    notes = []
    if "reversible" in model:
        old = bool(model["reversible"])
        residual = model.get("residual", "two_stream")
        if old and residual not in ("two_stream", "reversible"):
            raise _config_error(
                f"config.model.reversible=True (legacy) contradicts "
                f"config.model.residual={residual!r}; set only model.residual"
            )
        with unlocked():
            del model["reversible"]
            model["residual"] = "reversible" if old else residual
        notes.append(f"model.reversible={old} is now model.residual={model['residual']!r}")
    if "ff_chunk_size" in model:
        old, new = model["ff_chunk_size"], model.get("position_chunk_size", 0)
        if new and old and new != old:
            raise _config_error(
                f"config.model.ff_chunk_size={old} (legacy) contradicts "
                f"config.model.position_chunk_size={new}; set only model.position_chunk_size"
            )
        with unlocked():
            del model["ff_chunk_size"]
            model["position_chunk_size"] = new or old
        notes.append(f"model.ff_chunk_size={old} is now model.position_chunk_size")
    return notes


def migrate(config) -> list[str]:
    """Rewrites `LEGACY_FIELDS` of `config` (a ConfigDict, locked or not, or the dict of a
    saved `config.json`) into today's fields, in place; returns one note per rewritten field
    (empty when there was nothing to do). A legacy value that contradicts the new field is a
    ConfigError."""
    model = config.get("model") if isinstance(config, dict) else config.get("model", None)
    if model is None:
        return []
    if isinstance(model, ml_collections.ConfigDict):
        return _migrate_model(model, model.unlocked)
    return _migrate_model(model, contextlib.nullcontext)
