"""PostgreSQL for tests: one throwaway server per session (services.postgres), one database per test."""

from __future__ import annotations

import itertools

from services.postgres import PostgresServer

_names = itertools.count(1)


def fresh_database(server: PostgresServer, prefix: str = "t") -> tuple[str, str]:
    """Create an empty database on ``server``; return (name, DSN)."""
    if not server.running:  # a test stopped it (immediate mode) and failed before starting it again
        server.start()
    name = f"{prefix}{next(_names)}"
    return name, server.create_database(name)
