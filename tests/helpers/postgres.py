"""PostgreSQL for tests: one throwaway server per session (services.postgres), one database per test."""

from __future__ import annotations

import itertools

import asyncpg

from services.postgres import PostgresServer

_names = itertools.count(1)


def fresh_database(server: PostgresServer, prefix: str = "t") -> tuple[str, str]:
    """Create an empty database on ``server``; return (name, DSN)."""
    if not server.running:  # a test stopped it (immediate mode) and failed before starting it again
        server.start()
    name = f"{prefix}{next(_names)}"
    return name, server.create_database(name)


async def stored_seqs(dsn: str) -> dict[str, list[int]]:
    """Every stored reading's seq, per device, ascending (duplicates would show twice)."""
    conn = await asyncpg.connect(dsn)
    try:
        seqs: dict[str, list[int]] = {}
        for device_id, seq in await conn.fetch("SELECT device_id, seq FROM readings ORDER BY device_id, seq"):
            seqs.setdefault(device_id, []).append(seq)
        return seqs
    finally:
        await conn.close()
