"""The error every bad configuration raises, naming the key."""


class ConfigError(ValueError):
    """A run configuration that cannot be run, with the reason."""
