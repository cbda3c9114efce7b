"""The configuration: the declared schema of every field (`schema.py`), `default_config()`,
config files, validation and legacy field names. Config files use this package's names:
`from reformer.config import default_config`."""

from reformer.config.schema import default_config, load_config_file, validate  # noqa: F401
from reformer.errors import ConfigError  # noqa: F401
