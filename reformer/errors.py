"""The error every entry point turns into one line and exit status 2."""


class ConfigError(ValueError):
    """A configuration field holds a value the project cannot run with."""
