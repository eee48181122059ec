"""A throwaway PostgreSQL 15 server: initdb and pg_ctl in a temporary directory, on a free loopback port.

Used by the tests (one server per test session), ``make demo DEMO_STORAGE=postgresql`` and
bench/storage_bench.py. initdb refuses to run as root, so when we are root the server runs
as ``nobody`` (setpriv) in a directory owned by it. Clients connect over TCP on 127.0.0.1
with ``trust`` authentication: this is a disposable server, never a production one.

    with PostgresServer() as pg:
        dsn = pg.dsn                      # postgresql://edgewire@127.0.0.1:PORT/edgewire
        other = pg.create_database("t1")  # another empty database, its DSN
        pg.stop(mode="immediate")         # a crash: no shutdown checkpoint
        pg.start()                        # same port, same data

``python -m services.postgres`` runs one until Ctrl-C and prints its DSN.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from services.daemon import serve_until_signal
from services.errors import NotInstalledError, ServiceError
from services.process import Throwaway, as_user, free_port, give_to, run_as_user

BIN_DIR = Path(os.environ.get("EDGEWIRE_PG_BIN", "/usr/lib/postgresql/15/bin"))
INSTALL_HINT = "install PostgreSQL 15: apt-get install -y postgresql (or set EDGEWIRE_PG_BIN)"
STOP_MODES = ("smart", "fast", "immediate")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Appended to postgresql.conf. Durability stays on (fsync, synchronous_commit): the tests
# check that what was acknowledged survives an immediate-mode stop.
DEFAULT_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "15min",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
}


class PostgresServer(Throwaway):
    """One disposable PostgreSQL cluster. Not thread-safe; one owner starts and stops it."""

    def __init__(self, port: int | None = None, user: str = "edgewire", database: str = "edgewire",
                 parent_dir: str | Path | None = None, settings: dict[str, str] | None = None,
                 bin_dir: Path = BIN_DIR, start_timeout_s: float = 60.0) -> None:
        if not (_NAME.match(user) and _NAME.match(database)):
            raise ServiceError("user and database must be lower-case SQL identifiers")
        self.user = user
        self.database = database
        self.port = port or 0
        self.bin_dir = Path(bin_dir)
        self.settings = dict(DEFAULT_SETTINGS, **(settings or {}))
        self.start_timeout_s = start_timeout_s
        self.os_user = run_as_user()
        self._parent = Path(parent_dir) if parent_dir else None
        self.base_dir: Path | None = None
        self._fixed_port = port is not None

    # ------------------------------------------------------------------ paths
    @property
    def data_dir(self) -> Path:
        return self._base / "data"

    @property
    def log_path(self) -> Path:
        return self._base / "postgres.log"

    @property
    def _base(self) -> Path:
        if self.base_dir is None:
            raise ServiceError("the server has not been set up yet: call start()")
        return self.base_dir

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise NotInstalledError(f"{path} not found: {INSTALL_HINT}")
        return str(path)

    # ------------------------------------------------------------------ lifecycle
    def _run(self, argv: list[str], what: str, demote: bool = True, timeout: float = 120.0) -> str:
        command = as_user(self.os_user, argv) if demote else argv
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                  cwd=self.base_dir or None, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{what}: no answer within {timeout:g} s") from None
        if done.returncode != 0:
            raise ServiceError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")
        return done.stdout

    def _init(self) -> None:
        initdb = self._bin("initdb")
        base = Path(tempfile.mkdtemp(prefix="ew-pg-", dir=self._parent))
        self.base_dir = base
        base.chmod(0o700)
        give_to(self.os_user, base)
        self._run([initdb, "-D", str(self.data_dir), "-U", self.user, "-A", "trust", "-E", "UTF8",
                   "--no-locale", "--no-sync", "--no-instructions"], "initdb")

    def _write_settings(self) -> None:
        lines = [f"{key} = {value}" for key, value in self.settings.items()]
        lines += [f"port = {self.port}", f"unix_socket_directories = '{self._base}'"]
        conf = self.data_dir / "postgresql.auto.conf"  # read last: wins over postgresql.conf
        conf.write_text("# written by services.postgres\n" + "\n".join(lines) + "\n")
        give_to(self.os_user, conf)

    def start(self) -> Self:
        """Create the cluster on first use, then start it and wait until it accepts connections."""
        first = self.base_dir is None
        if first:
            self._init()
        attempts = 1 if self._fixed_port or not first else 5
        for attempt in range(attempts):
            if not self._fixed_port and (first or not self.port):
                self.port = free_port()
            self._write_settings()
            try:
                self._run([self._bin("pg_ctl"), "start", "-w", "-t", str(int(self.start_timeout_s)),
                           "-D", str(self.data_dir), "-l", str(self.log_path)], "pg_ctl start",
                          timeout=self.start_timeout_s + 10)
                break
            except ServiceError:
                if attempt + 1 < attempts and "could not bind" in self.log_text()[-2000:]:
                    continue  # someone took the port between free_port() and the bind: pick another
                raise ServiceError(f"PostgreSQL did not start; its log {self.log_path} ends with:\n"
                                   f"{self.log_text()[-1500:]}") from None
        if first:
            self._run([self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                       self.database], "createdb", demote=False)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean), ``immediate`` (a crash: recovery on next start) or ``smart``."""
        if mode not in STOP_MODES:
            raise ServiceError(f"stop mode {mode!r} must be one of {', '.join(STOP_MODES)}")
        if self.base_dir is None or not self.running:
            return
        self._run([self._bin("pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir)],
                  f"pg_ctl stop -m {mode}", timeout=70)

    def restart(self, mode: str = "fast") -> PostgresServer:
        self.stop(mode)
        return self.start()

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive (a zombie left for PID 1 to reap does not count)."""
        pid = self.pid
        if pid is None:
            return False
        try:
            return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from postmaster.pid)."""
        if self.base_dir is None:
            return None
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and delete its directory."""
        if self.base_dir is None:
            return
        for mode in ("fast", "immediate"):
            with contextlib.suppress(ServiceError):
                self.stop(mode)
            if not self.running:
                break
        pid = self.pid
        if pid is not None and self.running:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None

    # ------------------------------------------------------------------ clients
    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        """``postgresql://USER@127.0.0.1:PORT/DATABASE`` of the default database."""
        return self.dsn_for(self.database)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its DSN."""
        if not _NAME.match(name):
            raise ServiceError(f"database name {name!r} must be a lower-case SQL identifier")
        self._run([self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
                  "createdb", demote=False)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting its clients first."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run ``sql`` with psql (unaligned, tuples only) and return its output."""
        return self._run([self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                          "-d", database or self.database, "-c", sql], "psql", demote=False)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, ServiceError):
            return ""


def main(argv: list[str] | None = None) -> int:
    return serve_until_signal(lambda port: PostgresServer(port=port), lambda server: server.dsn, argv,
                              prog="python -m services.postgres",
                              description="Run a throwaway PostgreSQL 15 on loopback until Ctrl-C.", what="DSN")


if __name__ == "__main__":
    raise SystemExit(main())
