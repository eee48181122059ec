"""Servers under test, started and stopped by the benchmark: the gateway and Mosquitto.

Both run as child processes with RLIMIT_NOFILE raised to the hard limit, bound to
loopback (Mosquitto, launched by services.mosquitto: its websockets listener ignores the
bind address, so it gets a free, unusual port and is always stopped afterwards). Every
wait here is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from bench.errors import BenchError
from services import mosquitto
from services.errors import ServiceError
from services.mosquitto import mosquitto_path
from services.process import free_port, raise_nofile_limit

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """Common part: a child process, its PID for /proc sampling, a bounded stop."""

    name = "server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path: Path | None = None
        self._log: BinaryIO | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
               cwd: Path = ROOT) -> None:
        self.log_path = log_path
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=raise_nofile_limit, cwd=str(cwd), env=env)

    def log_tail(self, n: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(10)
        else:
            code = self.proc.returncode
        if self._log is not None:
            with contextlib.suppress(Exception):
                self._log.close()
        return code


class MosquittoServer:
    """The benchmark's broker: services.mosquitto (the one launcher) with a websockets listener,
    quiet logging, no persistence, anonymous; ``url`` is its websockets URL."""

    name = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.broker = mosquitto.MosquittoServer(parent_dir=workdir, websockets=True, quiet=True)

    def start(self) -> None:
        try:
            self.broker.start()
        except ServiceError as err:
            raise BenchError(str(err)) from None

    @property
    def pid(self) -> int:
        pid = self.broker.pid
        assert pid is not None, "mosquitto is not running"
        return pid

    @property
    def port(self) -> int:
        return self.broker.ws_port

    @property
    def url(self) -> str:
        return self.broker.ws_url

    @property
    def log_path(self) -> Path | None:
        return self.broker.log_path if self.broker.base_dir is not None else None

    def log_tail(self, n: int = 2000) -> str:
        return self.broker.log_text()[-n:]

    def stop(self, timeout: float = 20.0) -> int | None:
        process = self.broker.process
        self.broker.cleanup()
        return None if process is None else process.returncode


class GatewayServer(ServerProcess):
    """``python -m gateway serve`` on a free loopback port with a given data dir."""

    name = "gateway"

    def __init__(self, data_dir: Path, storage: str = "sqlite", dashboard_interval_ms: float = 50.0,
                 extra_args: list[str] | None = None, uvloop: bool = True, root: Path | None = None,
                 env: dict[str, str] | None = None, workers: int | None = None) -> None:
        """``workers``: passed as ``--workers N`` (gateway processes); None leaves it out, so the gateway's
        own default applies (and a gateway without the option still starts)."""
        super().__init__()
        self.workers = workers
        self.env = dict(env or {})  # EDGEWIRE_* settings for A/B runs (bench --gateway-env)
        self.root = root or ROOT  # a patched copy of the repository for A/B runs (bench --gateway-root)
        self.data_dir = data_dir
        self.storage = storage
        self.dashboard_interval_ms = dashboard_interval_ms
        self.extra_args = list(extra_args or [])
        self.uvloop = uvloop

    def argv(self) -> list[str]:
        """The gateway's command line on ``self.port``."""
        argv = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--storage", self.storage,
                "--dashboard-interval-ms", f"{self.dashboard_interval_ms:g}", *self.extra_args]
        if not self.uvloop:
            argv.append("--no-uvloop")
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        return argv

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = self.argv()
        env = dict(os.environ)
        env.setdefault("EDGEWIRE_LOG_LEVEL", "warning")
        env["PYTHONPATH"] = str(self.root)
        env.update(self.env)
        self._spawn(argv, self.data_dir / "gateway.log", env, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else "?"
                tail = self.log_tail()
                if self.workers is not None and "unrecognized arguments" in tail and "--workers" in tail:
                    raise BenchError("this gateway does not know --workers: leave the bench's --workers out")
                raise BenchError(f"gateway exited at start (code {code}): {tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"gateway /healthz not 200 within {timeout:g} s: {self.log_tail()}")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        """Counters from the gateway's /metrics (Prometheus text), without labels; empty if unreachable."""
        out: dict[str, float] = {}
        url = f"http://127.0.0.1:{self.port}/metrics"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line and not line.startswith("#") and "{" not in line:
                    name, _, value = line.partition(" ")
                    with contextlib.suppress(ValueError):
                        out[name.removeprefix("edgewire_")] = float(value)
        return out


def count_sqlite_readings(db: Path) -> int | None:
    """Rows in a gateway's SQLite ``readings`` table (read-only), or None when there is no database."""
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])


def scratch_dir(prefix: str = "edgewire-bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


__all__ = ["GatewayServer", "MosquittoServer", "count_sqlite_readings", "free_port", "mosquitto_path", "scratch_dir"]
