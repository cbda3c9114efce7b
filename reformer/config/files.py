"""Config files: `get_config([variant])` of a Python file, local or on Cloud Storage, as
`--config path[:variant]` loads it."""

from __future__ import annotations

import os
import types

import ml_collections

from reformer import storage
from reformer.config.legacy import migrate


def load_config_file(path: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """`get_config([variant])` of a config file, with legacy fields migrated (`migrate`)."""
    name = os.path.splitext(os.path.basename(str(path)))[0]
    module = types.ModuleType(f"reformer_configs_{name}")
    module.__file__ = str(path)
    exec(compile(storage.read_text(path), str(path), "exec"), module.__dict__)  # Local or gs://.
    config = module.get_config() if variant is None else module.get_config(variant)
    migrate(config)
    return config
