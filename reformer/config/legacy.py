"""Config fields that were renamed or replaced (`Field.legacy` in the schema), and their
migration: config files and saved workdirs (`config.json`) that still name them load as
today's fields."""

from __future__ import annotations

import contextlib

import ml_collections

from reformer.config.schema import GROUPS, fields
from reformer.errors import ConfigError


def legacy_fields() -> dict[str, str]:
    """`{"group.old": "group.new"}` of every legacy field the schema declares."""
    return {
        f"{group}.{field.legacy[0]}": f"{group}.{name}"
        for group, name, field in fields()
        if field.legacy
    }


def _migrate_group(group_name: str, group, unlocked) -> list[str]:
    """Rewrites the legacy fields of one group (a dict or a ConfigDict) in place."""
    notes = []
    for name, field in GROUPS[group_name].items():
        if not field.legacy or field.legacy[0] not in group:
            continue
        old_name, convert = field.legacy
        old, current = group[old_name], group.get(name, field.default)
        try:
            new = convert(old, current)
        except ValueError:
            raise ConfigError(
                f"config.{group_name}.{old_name}={old!r} (legacy) contradicts "
                f"config.{group_name}.{name}={current!r}; set only {group_name}.{name}"
            ) from None
        with unlocked():
            del group[old_name]
            group[name] = new
        notes.append(f"{group_name}.{old_name}={old!r} is now {group_name}.{name}={new!r}")
    return notes


def migrate(config) -> list[str]:
    """Rewrites the legacy fields of `config` (a ConfigDict, locked or not, or the dict of a
    saved `config.json`) into today's fields, in place; returns one note per rewritten field
    (empty when there was nothing to do). A legacy value that contradicts the new field is a
    ConfigError."""
    notes = []
    for group_name in GROUPS:
        group = config.get(group_name) if isinstance(config, dict) else config.get(group_name, None)
        if group is None:
            continue
        if isinstance(group, ml_collections.ConfigDict):
            notes += _migrate_group(group_name, group, group.unlocked)
        else:
            notes += _migrate_group(group_name, group, contextlib.nullcontext)
    return notes
