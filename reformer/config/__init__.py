"""The configuration: the declared schema of every field (`schema.py`), config files,
validation and legacy field names. Config files and users import from here
(`from reformer.config import default_config`); the package's own modules import from the
module that defines a name.

    python -m reformer.config      # every field with its default, rule and doc
"""

from reformer.config.files import load_config_file  # noqa: F401
from reformer.config.legacy import migrate  # noqa: F401
from reformer.config.schema import default_config  # noqa: F401
from reformer.config.validation import mesh_shape, validate  # noqa: F401
from reformer.errors import ConfigError  # noqa: F401
