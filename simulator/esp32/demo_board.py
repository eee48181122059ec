"""An emulated ESP32 for ``make demo DEMO_BOARDS=N``: started, flashed with ``make flash``'s
procedure (firmware/flash.py, esptool and mpremote over socket://), then left running the app.

Its access point is in the board's world.json (SSID ``demo-lab``); its console is captured in
``<state>/uart.log``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from simulator.esp32.errors import AppError

ROOT = Path(__file__).resolve().parents[2]
SSID = "demo-lab"


class DemoBoard:
    """One board process with its state directory; ``flash()`` puts the app on it."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.password = ""

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        world = self.state / "world.json"
        try:
            self.password = json.loads(world.read_text())["ap"]["password"]
        except (OSError, ValueError, KeyError, TypeError):
            self.password = secrets.token_urlsafe(12)
            world.write_text(json.dumps({"ap": {"ssid": SSID, "password": self.password}}))
            os.chmod(world, 0o600)
        with open(self.state / "board.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "simulator.esp32", "--port", "0", "--state", str(self.state)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"socket://127\.0\.0\.1:(\d+)", line)
        if match is None:
            self.stop()
            raise AppError(f"the emulated board did not start: see {self.state / 'board.log'}")
        self.port = int(match.group(1))

    def flash(self, device_id: str, token: str, gateway_url: str, interval_s: int = 5) -> str:
        """Run firmware/flash.py against the board; returns its summary line. Raises AppError."""
        image = self.state / "micropython-demo.bin"
        if not image.exists():
            subprocess.run([sys.executable, str(ROOT / "firmware" / "tools" / "make_test_image.py"), str(image)],
                           check=True, capture_output=True, timeout=60)
        env = dict(os.environ, PORT=self.url, DEVICE_ID=device_id, WIFI_SSID=SSID, WIFI_PASSWORD=self.password,
                   GATEWAY_URL=gateway_url, TOKEN=token, MICROPYTHON_BIN=str(image), INTERVAL_S=str(interval_s))
        proc = subprocess.run([sys.executable, str(ROOT / "firmware" / "flash.py")], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise AppError("flashing the emulated board failed: " + (proc.stderr or proc.stdout).strip()[-500:])
        return proc.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
