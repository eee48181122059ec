"""OTA end to end (docs/ota.md): the emulated ESP32 flashed by firmware/flash.py (as `make flash`, with the
release key asked from the gateway) and a real gateway process. A release staged from this checkout
(`flash.py --release`) is uploaded with `ota upload` and rolled out with `ota rollout create`: the board
downloads it from the gateway, boots it on trial and reports good; then a release that crashes on import
is rolled back by the board after three boots and stops its rollout with an alert.

The board reaches the gateway through a byte-counting relay on loopback: the bytes on the wire of one update.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.test_board_app import SSID, device_status, uart, wait_for, write_world
from tests.firmware.test_flash import ROOT, SECRET_PASSWORD, EmulatedBoard, _ensure_node_modules, image  # noqa: F401
from tests.firmware.test_flash_registration import flash
from tests.helpers.gateway import GatewayProcess

pytestmark = pytest.mark.timeout(300)

DEVICE = "OTA-E2E"
FAST: dict[str, Any] = {"ota_tick_s": 0.2, "ota_offer_timeout_s": 10.0}


class Relay:
    """A TCP relay on loopback to ``port``, counting the bytes each way (every connection)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.up = 0  # board -> gateway
        self.down = 0  # gateway -> board
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path, **FAST) as gateway:
        yield gateway


def stage_release(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "firmware" / "flash.py"), "--release", str(target)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def wait_rollout(gw: GatewayProcess, rollout_id: str, state: str, timeout: float, log: Path) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        shown = json.loads(gw.cli("ota", "rollout", "show", rollout_id).stdout)
        return shown if shown["rollout"]["state"] == state else None
    got: dict[str, Any] = wait_for(reached, timeout, f"rollout {rollout_id} {state}", log)
    return got


def create_rollout(gw: GatewayProcess, release: str) -> str:
    created = json.loads(gw.cli("ota", "rollout", "create", release, "--devices", DEVICE).stdout)
    return str(created["rollout"]["rollout"])


def report(gw: GatewayProcess) -> dict[str, Any]:
    reports = json.loads(gw.cli("ota", "devices").stdout)
    return next((r for r in reports if r["device"] == DEVICE), {})


def test_update_from_the_real_gateway_then_a_broken_release_is_rolled_back(
        gw: GatewayProcess, image: Path, tmp_path: Path) -> None:  # noqa: F811
    _ensure_node_modules()
    # before any upload the gateway has no release key to hand out (and makes none over the network)
    nokey = asyncio.run(gw.admin({"t": "ota_pubkey"}))
    assert nokey["pubkey"] is None and "ota pubkey" in nokey["msg"], nokey
    # the operator's path: stage the checkout's app, upload it as a new version
    release_dir = tmp_path / "release"
    staged = stage_release(release_dir)
    assert staged.returncode == 0, staged.stderr
    assert "upload it with: python -m gateway ota upload --kind esp32 --version" in staged.stdout, staged.stdout
    uploaded = gw.cli("ota", "upload", "--kind", "esp32", "--version", "0.2.0", str(release_dir))
    assert uploaded.stdout.strip() == "esp32-0.2.0"
    key = gw.cli("ota", "pubkey").stdout.strip()
    assert asyncio.run(gw.admin({"t": "ota_pubkey"}))["pubkey"] == key

    relay = Relay(gw.port)
    board = EmulatedBoard(tmp_path / "board")
    try:
        write_world(board.state, ap={"ssid": SSID, "password": SECRET_PASSWORD})
        log = board.state / "uart.log"
        done = flash(PORT=board.url, MICROPYTHON_BIN=str(image), DEVICE_ID=DEVICE, WIFI_SSID=SSID,
                     WIFI_PASSWORD=SECRET_PASSWORD, GATEWAY_URL=f"ws://127.0.0.1:{relay.port}/v1/device",
                     ADMIN_TOKEN_FILE=str(gw.data_dir / "admin.token"), BAUD="460800", INTERVAL_S="30")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"release key from the gateway: {key[:16]}" in done.stdout, done.stdout
        assert "refuse updates" not in done.stdout, done.stdout
        fs = board.state / "fs"
        assert json.loads((fs / "config.json").read_text())["ota_pubkey"] == key
        first = json.loads((fs / "app_cur").read_text())["release"]
        wait_for(lambda: device_status(gw, DEVICE).get("fw") == first[len("esp32-"):], 60, "the flashed app online",
                 log)

        # 1. a good release: downloaded from the gateway, trial, good; the rollout is done
        before = relay.counts()
        started = time.monotonic()
        rollout = create_rollout(gw, "esp32-0.2.0")
        shown = wait_rollout(gw, rollout, "done", 120, log)
        took = time.monotonic() - started
        after = relay.counts()
        assert [(m["device"], m["state"]) for m in shown["members"]] == [(DEVICE, "good")], shown
        assert report(gw)["release"] == "esp32-0.2.0" and report(gw)["state"] == "good"
        wait_for(lambda: device_status(gw, DEVICE).get("fw") == "0.2.0", 30, "fw 0.2.0 on the dashboard", log)
        assert json.loads((fs / "app_cur").read_text()) == {"slot": "b", "release": "esp32-0.2.0"}
        slot_b = {str(p.relative_to(fs / "app_b")).replace("/", "."): p.read_bytes()
                  for p in (fs / "app_b").rglob("*") if p.is_file()}
        assert slot_b == {p.name: p.read_bytes() for p in release_dir.iterdir()}  # the release, nothing else
        size = sum(len(v) for v in slot_b.values())
        chunks = int(gw.metrics().get("edgewire_ota_chunks_total", 0))
        offer_to_good = (shown["members"][0]["updated"] - shown["rollout"]["created"]) / 1000
        print(f"\nupdate of the {size}-byte app ({len(slot_b)} files) from a real gateway: rollout created to "
              f"the board's good {offer_to_good:.1f} s (gateway clock; {took:.1f} s seen by the CLI); on the wire "
              f"{after[1] - before[1]} bytes to the board, {after[0] - before[0]} from it (TCP payload: WebSocket "
              f"frames, the reconnect after the reset included); {chunks} chunks")

        # 2. a release that crashes on import: three trial boots, back to the good slot, rollout stopped
        broken_dir = tmp_path / "broken"
        shutil.copytree(release_dir, broken_dir)
        (broken_dir / "app.mpy").unlink()
        (broken_dir / "app.py").write_text("raise ImportError('this release is broken')\n")  # ota upload compiles it
        gw.cli("ota", "upload", "--kind", "esp32", "--version", "0.3.0", str(broken_dir))
        rollout = create_rollout(gw, "esp32-0.3.0")
        shown = wait_rollout(gw, rollout, "stopped", 150, log)
        assert [(m["device"], m["state"], m["reason"]) for m in shown["members"]] == [
            (DEVICE, "rolled_back", "crashed")], shown
        assert (report(gw)["release"], report(gw)["state"], report(gw)["reason"]) == (
            "esp32-0.3.0", "rolled_back", "crashed")
        text = uart(board.state)
        assert text.count("this release is broken") == 3 and "failed 3 boots: back to slot b" in text, text[-3000:]
        assert json.loads((fs / "app_cur").read_text()) == {"slot": "b", "release": "esp32-0.2.0"}
        alerts = asyncio.run(gw.admin({"t": "alerts"}))["alerts"]
        ours = [a for a in alerts if a["rule"] == "ota_rollout"]
        assert len(ours) == 1 and rollout in ours[0]["text"], ours
        wait_for(lambda: device_status(gw, DEVICE).get("fw") == "0.2.0", 30, "fw 0.2.0 again", log)
    finally:
        board.stop()
        relay.close()
