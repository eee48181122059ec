"""The ``storage`` setting: ``sqlite``, ``none`` or a ``postgresql://`` URL (checked; shown without password)."""

from __future__ import annotations

import urllib.parse

from gateway.errors import ConfigError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(value: str) -> bool:
    return value.startswith(POSTGRES_SCHEMES)


def storage_kind(value: str) -> str:
    """``sqlite``, ``none`` or ``postgresql``; ConfigError naming the setting for anything else."""
    if value in ("sqlite", "none"):
        return value
    if is_postgres_url(value):
        check_dsn(value)
        return "postgresql"
    raise ConfigError(f"storage: {redact(value)!r} must be 'sqlite', 'none' or a postgresql://USER@HOST:PORT/DB URL")


def check_dsn(dsn: str) -> None:
    """ConfigError unless ``dsn`` is a well-formed postgresql:// URL naming a database."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        port = parts.port  # ValueError if not a number in range
    except ValueError as err:
        raise ConfigError(f"storage: {redact(dsn)!r} is not a valid PostgreSQL URL ({err})") from None
    if not parts.path.strip("/"):
        raise ConfigError(f"storage: {redact(dsn)!r} names no database: postgresql://USER@HOST:PORT/DB")
    if port == 0:
        raise ConfigError(f"storage: {redact(dsn)!r}: port 0 is not a server port")


def redact(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***`` (for logs, /healthz and error messages)."""
    if not is_postgres_url(dsn):
        return dsn
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return dsn.split("://", 1)[0] + "://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = "&".join("password=***" if item.lower().startswith("password=") else item
                     for item in parts.query.split("&")) if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
