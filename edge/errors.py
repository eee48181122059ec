"""The edge agent's exception tree. Each class also inherits the matching built-in."""


class EdgeError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config {key}: {message}")
        self.key = key


class SensorError(EdgeError, RuntimeError):
    """A sensor could not be read; the message says what to check."""


class OutputError(EdgeError, RuntimeError):
    """An output (LED, buzzer, relay) could not be set up or switched."""


class QueueError(EdgeError, OSError):
    """The on-disk reading queue failed; the message names the file to check."""
