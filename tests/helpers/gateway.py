"""Run a real gateway process on loopback for tests: start, kill, restart, register, inspect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from services.process import free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
                          check=check, timeout=60)


class GatewayProcess:
    """A gateway subprocess with its own data dir and port.

    ``settings`` become lines of its TOML config (e.g. rate=100, alerts=[...]). ``open_files``:
    run it with that hard (and soft) RLIMIT_NOFILE, which it cannot raise (Debian's 1024).
    """

    def __init__(self, tmp_path: Path, port: int | None = None, env: dict[str, str] | None = None,
                 name: str = "gateway", open_files: int | None = None, **settings: Any) -> None:
        self.data_dir = Path(tmp_path) / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.env = env or {}
        self.settings = settings
        self.open_files = open_files
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "gateway.log"
        self.config_path = self.data_dir / "gateway.toml"
        self._write_config()

    def _write_config(self) -> None:
        lines = []
        tables = ("alerts", "webhooks", "metrics")  # lists of TOML tables: [[alerts]], [[webhooks]], [[metrics]]
        for key, value in self.settings.items():
            if key not in tables:
                lines.append(f"{key} = {json.dumps(value)}")
        for key in tables:
            for table in self.settings.get(key, []):
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def device_url(self) -> str:
        return self.url + "/v1/device"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "edgewire.db"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "gateway", "serve", "--config", str(self.config_path), "--host", "127.0.0.1",
                 "--port", str(self.port), "--data-dir", str(self.data_dir)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group: ``kill`` takes the workers too
                preexec_fn=None if self.open_files is None else self._limit_open_files)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.http_url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway not healthy within {timeout}s:\n{self.log_text()[-3000:]}")

    def _limit_open_files(self) -> None:
        """In the child, before exec: lower RLIMIT_NOFILE (soft and hard) to ``open_files``."""
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def health(self) -> tuple[int, dict[str, Any]]:
        """/healthz: (HTTP status, body)."""
        try:
            with urllib.request.urlopen(self.http_url + "/healthz", timeout=5) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("gateway did not stop within timeout after SIGTERM") from None

    def kill(self) -> None:
        """SIGKILL of the gateway's every process (the host and its workers, as a crash of the machine or
        systemd's KillMode=control-group would): no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> GatewayProcess:
        self.stop()
        return self.start()

    def register(self, device_id: str, *extra: str) -> str:
        out = run_cli("devices", "add", device_id, "--data-dir", str(self.data_dir), *extra).stdout
        token = out.strip().splitlines()[-1].strip()
        assert token.startswith("ewt_"), out
        return token

    def register_many(self, device_ids: list[str]) -> dict[str, str]:
        """Register many devices through the running gateway's admin endpoint (one connection)."""

        async def run() -> dict[str, str]:
            from websockets.asyncio.client import connect

            tokens: dict[str, str] = {}
            async with connect(self.url + "/v1/admin",
                               additional_headers={"Authorization": f"Bearer {self.admin_token}"}) as ws:
                for device_id in device_ids:
                    await ws.send(json.dumps({"t": "register", "id": device_id, "device_id": device_id}))
                    reply = json.loads(await ws.recv())
                    assert reply["t"] == "ok", reply
                    tokens[device_id] = reply["token"]
            return tokens

        return asyncio.run(run())

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--data-dir", str(self.data_dir), check=check)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the gateway's SQLite database directly (read-only)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def seqs(self, device_id: str) -> list[int]:
        return [row[0] for row in self.query("SELECT seq FROM readings WHERE device_id=? ORDER BY seq",
                                             (device_id,))]

    def storage_counts(self) -> dict[str, int]:
        return {device: n for device, n in self.query("SELECT device_id, count(*) FROM readings GROUP BY device_id")}

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    async def admin(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        from gateway.cli.admin_client import admin_call

        return await admin_call(self.url, self.admin_token, request, timeout)

    def send_command(self, device_id: str, name: str, args: dict[str, Any] | None = None,
                     timeout: float = 10.0) -> dict[str, Any]:
        reply = asyncio.run(self.admin({"t": "command", "device_id": device_id, "name": name,
                                        "args": args or {}, "timeout": timeout}, timeout + 5))
        result: dict[str, Any] = reply["result"]
        return result

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
