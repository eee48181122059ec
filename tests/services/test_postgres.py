"""services.postgres: a real PostgreSQL 15 as a non-root user on a free loopback port; crash and restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.errors import NotInstalledError, ServiceError
from services.postgres import PostgresServer


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (its parent, pg_ctl, is gone; PID 1 may not reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _owner_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_session_server_survives_an_immediate_stop(postgres_server: PostgresServer) -> None:
    pg = postgres_server
    assert pg.running and pg.pid is not None
    if os.geteuid() == 0:
        assert _owner_uid(pg.pid) != 0  # initdb refuses root: the server runs as nobody
    assert pg.dsn == f"postgresql://edgewire@127.0.0.1:{pg.port}/edgewire"
    pg.psql("CREATE TABLE IF NOT EXISTS launcher_probe (n int); INSERT INTO launcher_probe VALUES (42)")
    port = pg.port
    pg.stop(mode="immediate")  # no shutdown checkpoint: recovery replays the WAL
    assert not pg.running
    pg.start()
    assert pg.port == port and pg.running
    assert pg.psql("SELECT sum(n) FROM launcher_probe").strip() == "42"
    pg.psql("DROP TABLE launcher_probe")
    with pytest.raises(ServiceError, match="stop mode"):
        pg.stop(mode="sudden")


def test_context_manager_cleans_up(tmp_path: Path) -> None:
    with PostgresServer(parent_dir="/tmp") as pg:
        base, pid = pg.base_dir, pg.pid
        assert base is not None and pid is not None and base.is_dir()
        dsn = pg.create_database("second")
        assert dsn.endswith("/second") and pg.psql("SELECT 1", "second").strip() == "1"
    assert not base.exists()
    assert not _alive(pid)


def test_missing_binaries_say_what_to_install(tmp_path: Path) -> None:
    server = PostgresServer(bin_dir=tmp_path / "nothing-here")
    with pytest.raises(NotInstalledError, match="apt-get install -y postgresql"):
        server.start()
    server.cleanup()
