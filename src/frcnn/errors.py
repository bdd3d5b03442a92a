"""Errors a caller of frcnn may catch, shared by every layer (a leaf module: it imports nothing)."""


class ConfigError(ValueError):
    """A config value that cannot work; raised before any training starts, naming the key."""
