"""Shared fixtures: a real gateway process on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.postgres import PostgresServer
from tests.helpers.gateway import GatewayProcess
from tests.helpers.postgres import fresh_database

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A started gateway with default settings; stopped (SIGTERM, then SIGKILL) afterwards."""
    gw = GatewayProcess(tmp_path)
    gw.start()
    try:
        yield gw
    finally:
        try:
            gw.stop()
        finally:
            gw.kill()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL 15 for the whole session (initdb + pg_ctl as a non-root user, free port).

    Missing PostgreSQL is an error, not a skip: CI installs it (.ci/run).
    """
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped afterwards."""
    name, dsn = fresh_database(postgres_server)
    try:
        yield dsn
    finally:
        if not postgres_server.running:
            postgres_server.start()
        postgres_server.drop_database(name)
