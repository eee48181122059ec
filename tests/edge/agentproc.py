"""Run the agent as a real process (``python -m edge run``) with simulated hardware, for tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.agent import Agent
from tests.edge.conftest import write_probe

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class AgentProcess:
    """An agent subprocess with sim sensors (CPU file, DS18B20 tree, mock MCP3008), LED on GPIO17,
    buzzer on GPIO27 and an active-low relay on GPIO22. ``extra`` is appended to its TOML."""

    def __init__(self, base: Path, device_url: str, token: str, device_id: str = "PI-1",
                 interval: float = 0.2, extra: str = "", dht: bool = False) -> None:
        self.base = Path(base) / "agent"
        self.base.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.base / "state"
        self.w1_dir = self.base / "w1"
        self.cpu_file = self.base / "cpu_temp"
        self.cpu_file.write_text("45000\n")
        write_probe(self.w1_dir, "28-00000a1b2c3d", 21500)
        self.config_path = self.base / "agent.toml"
        self.log_path = self.base / "agent.log"
        self.device_id = device_id
        dht_table = '[[sensors]]\ntype = "dht22"\nname = "air"\npin = 23\nsamples = 1\n' if dht else ""
        self.config_path.write_text(f'''
[agent]
device_id = "{device_id}"
token = "{token}"
gateway = "{device_url}"
interval = {interval}
state_dir = "{self.state_dir}"
backend = "sim"
log_level = "debug"

[uplink]
backoff_min = 0.2
backoff_max = 1.0
status_interval = 1.0

{dht_table}
[[sensors]]
type = "cpu_temperature"
sensor_file = "{self.cpu_file}"

[[sensors]]
type = "ds18b20"
devices_dir = "{self.w1_dir}"
metric = "soil_temperature"

[[sensors]]
type = "mcp3008"
name = "soil"
channel = 0
metric = "soil_moisture"
out_range = [0, 100]
sim_value = 0.4

[outputs.led]
pin = 17
[outputs.buzzer]
pin = 27
[outputs.relay]
pin = 22
active_high = false
{extra}
''')
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        with open(self.log_path, "ab") as log:
            command = [sys.executable, "-m", "edge", "--config", str(self.config_path), "run"]
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: self.status().get("pid") == self.proc.pid if self.proc else False, 30,
                 "the agent's first status file")
        return self

    def status(self) -> dict[str, Any]:
        """The agent's status file (LED pattern, output states and pin levels, queue counters)."""
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def queue_seqs(self) -> list[int]:
        """Seqs held in the on-disk queue (read-only; safe while the agent runs or after it died)."""
        conn = sqlite3.connect(f"file:{self.state_dir / 'queue.db'}?mode=ro", uri=True, timeout=10)
        try:
            return [row[0] for row in conn.execute("SELECT seq FROM readings ORDER BY seq")]
        finally:
            conn.close()

    def queue_next_seq(self) -> int:
        """The persisted seq counter: the seq the next reading will get."""
        conn = sqlite3.connect(f"file:{self.state_dir / 'queue.db'}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            return int(row[0]) if row else 1
        finally:
            conn.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("agent did not stop within timeout after SIGTERM") from None
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


class AgentThread:
    """An in-process Agent on its own event loop in a thread (tests watch its mock pins)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.loop: asyncio.AbstractEventLoop | None = None
        self.code: int | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> int:
            self.loop = asyncio.get_running_loop()
            return await self.agent.run()

        self.code = asyncio.run(main())

    def start(self) -> AgentThread:
        self.thread.start()
        wait_for(lambda: self.loop is not None, 10, "agent loop")
        return self

    def stop(self) -> int | None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.agent.stop, 0)
        self.thread.join(30)
        return self.code
