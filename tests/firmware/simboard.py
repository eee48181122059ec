"""A simulated ESP32 running the real firmware under CPython (tests' helper).

The flash is a directory: firmware/*.py and protocol/ are copied in as a
deploy would, config.json and sim.json written, and the runner
(simulator.micropython_standins.run) started as a subprocess. ``kill()`` is a
power cut (SIGKILL: nothing flushed after the last completed write).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOST_ONLY = {"flash.py"}  # firmware/*.py that run on the PC (firmware/flash.py HOST_ONLY)


class SimBoard:
    def __init__(self, tmp_path: Path, config: dict[str, Any], sim: dict[str, Any] | None = None,
                 speed: float = 1.0, name: str = "board") -> None:
        self.fs = Path(tmp_path) / name
        self.fs.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / "firmware").glob("*.py"):
            if source.name in HOST_ONLY:
                continue
            shutil.copy(source, self.fs / source.name)
        (self.fs / "protocol").mkdir(exist_ok=True)
        for source in (ROOT / "protocol").glob("*.py"):
            shutil.copy(source, self.fs / "protocol" / source.name)
        self.config = {"wifi_ssid": "lab", "wifi_password": "pw", "sensor": "dht22", "sensor_pin": 4,
                       "led_pin": 2, "ring_path": str(self.fs / "ring.bin"), "ring_records": 64,
                       "watchdog_s": 600, **config}
        (self.fs / "config.json").write_text(json.dumps(self.config))
        self.set_sim(**(sim or {}))
        self.speed = speed
        self.log_path = self.fs / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def set_sim(self, **values: Any) -> None:
        """Update sim.json atomically (the stand-ins re-read it when it changes)."""
        path = self.fs / "sim.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(values)
        tmp = self.fs / "sim.json.tmp"
        tmp.write_text(json.dumps(current))
        os.replace(tmp, path)

    def start(self) -> SimBoard:
        env = dict(os.environ, PYTHONUNBUFFERED="1", EW_SIM_SPEED=str(self.speed), PYTHONPATH=str(ROOT))
        for key in ("EW_SIM_RESET_CAUSE", "EW_SIM_RTC"):
            env.pop(key, None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "simulator.micropython_standins.run", "--fs", str(self.fs)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self) -> None:
        """Power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pins(self) -> dict[int, int]:
        path = self.fs / ".pins"
        if not path.exists():
            return {}
        return {int(k): int(v) for k, v in (item.split("=") for item in path.read_text().split())}

    def ring_header(self) -> dict[str, int]:
        """The newest valid ring header (same layout as firmware/ring.py)."""
        import binascii

        try:
            data = (self.fs / "ring.bin").read_bytes()
        except FileNotFoundError:
            return {}
        best: dict[str, int] = {}
        for slot in (0, 1):
            raw = data[slot * 48: slot * 48 + 48]
            if len(raw) < 48 or struct.unpack_from("<I", raw, 44)[0] != binascii.crc32(raw[:44]):
                continue
            magic, gen, head, count, cap, next_seq, dropped, _sb, _so = struct.unpack_from("<4sIIIIQIIq", raw)
            if magic in (b"EWR1", b"EWRF") and gen > best.get("gen", -1):
                best = {"gen": gen, "head": head, "count": count, "capacity": cap, "next_seq": next_seq,
                        "dropped": dropped}
        return best

    def __enter__(self) -> SimBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, board: SimBoard | None = None,
             interval: float = 0.1) -> Any:
    """Poll ``predicate`` until truthy; fail with ``what`` (and the board's console) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if board is not None and not board.alive():
            raise AssertionError(f"board died while waiting for {what}:\n{board.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            console = board.log_text()[-3000:] if board is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{console}")
        time.sleep(interval)
