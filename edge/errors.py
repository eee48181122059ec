"""The edge agent's exception tree. Each class also inherits the matching built-in."""

from __future__ import annotations

from typing import Any

# How TOML values read in messages (never Python's type names).
KIND_WORDS: dict[type, str] = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                               list: "a list", dict: "a table"}


class EdgeError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config {key}: {message}")
        self.key = key

    @classmethod
    def wrong_type(cls, key: str, kinds: tuple[type, ...], value: Any, doc: str = "") -> ConfigError:
        """``key`` holds a value of the wrong kind: say what is expected, in TOML words."""
        expected = "a number" if set(kinds) == {int, float} else " or ".join(
            KIND_WORDS.get(k, k.__name__) for k in kinds)
        if isinstance(value, bool):
            found = str(value).lower()
        elif isinstance(value, str | int | float):
            found = f"{KIND_WORDS[type(value)]} {value!r:.40}"
        else:
            found = KIND_WORDS.get(type(value), "a value of another kind")
        return cls(key, f"must be {expected}" + (f" ({doc})" if doc else "") + f", got {found}")


class SensorError(EdgeError, RuntimeError):
    """A sensor could not be read; the message says what to check."""


class OutputError(EdgeError, RuntimeError):
    """An output (LED, buzzer, relay) could not be set up or switched."""


class QueueError(EdgeError, OSError):
    """The on-disk reading queue failed; the message names the file to check."""


class UpdateError(EdgeError, RuntimeError):
    """An update was refused or failed; ``code`` is the stable reason the gateway is told
    (bad_manifest, bad_signature, bad_hash, wrong_kind, runtime_too_old, ota_disabled, busy,
    no_space, install, aborted)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
