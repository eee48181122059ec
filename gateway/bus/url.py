"""The ``bus`` setting: empty (embedded), ``redis://HOST:PORT/DB`` or ``nats://HOST:PORT``.

Parsed without importing a client library, so the configuration can be checked anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import ConfigError
from gateway.urls import hide_password, split_server_url

KINDS = ("memory", "redis", "nats")
DEFAULT_PORTS = {"redis": 6379, "nats": 4222}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # instance ids, channels, request kinds


@dataclass(frozen=True, slots=True)
class BusUrl:
    kind: str  # "memory" (no bus: everything in-process), "redis" or "nats"
    url: str  # as given (may hold a password: never log it, use ``display``)
    host: str = ""
    port: int = 0
    db: int = 0  # Redis database number

    @property
    def display(self) -> str:
        """The URL as it may be logged: without user and password."""
        if self.kind == "memory":
            return "embedded"
        return f"{self.kind}://{self.host}:{self.port}" + (f"/{self.db}" if self.kind == "redis" else "")


def parse_bus_url(text: str) -> BusUrl:
    """Check the ``bus`` setting; raise ConfigError naming it and saying what is expected."""
    text = text.strip()
    if not text:
        return BusUrl("memory", "")
    expected = "expected redis://HOST:PORT/DB or nats://HOST:PORT, or empty for no bus"
    parts, scheme, port = split_server_url("bus", text, DEFAULT_PORTS, expected, _safe(text))
    if parts.query or parts.fragment:
        raise ConfigError(f"bus: {_safe(text)} has a query or fragment; {expected}")
    db = 0
    path = parts.path.strip("/")
    if scheme == "redis":
        if path:
            if not path.isdigit() or int(path) > 15:
                raise ConfigError(f"bus: Redis database {path!r} must be a number from 0 to 15; {expected}")
            db = int(path)
    elif path:
        raise ConfigError(f"bus: a NATS URL has no path ({path!r}); {expected}")
    return BusUrl(scheme, text, parts.hostname or "", port or DEFAULT_PORTS[scheme], db)


def check_name(what: str, name: str) -> str:
    """An instance id, channel or request kind: letters, digits, ``_`` and ``-``, 1-63 characters."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{what}: {name!r} must be 1-63 letters, digits, '_' or '-' (starting with a letter "
                          "or digit)")
    return name


def _safe(text: str) -> str:
    """``text`` without a password, for error messages."""
    return hide_password(text)[:120]
