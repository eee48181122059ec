"""The emulated ESP32 runs what was flashed: boot.py, main.py, Wi-Fi, then a real gateway.

The board (simulator/esp32) runs MicroPython 1.27 (WebAssembly) with its modules bridged to the
board process (socket on loopback, network against world.json, machine, dht on the simulator's
DHT physics). The gateway is a real process on loopback (tests/helpers/gateway.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.esp32.board import HEAP_BYTES
from simulator.esp32.chip import Chip
from tests.firmware.test_flash import (  # noqa: F401 - fixtures
    ROOT,
    SECRET_PASSWORD,
    EmulatedBoard,
    _ensure_node_modules,
    board,
    image,
    make_flash,
)
from tests.helpers.gateway import GatewayProcess

SSID = "edgewire-lab"
HOT = {"heat_c": 20.0}  # above the example config's 30 C threshold: every sample is reported


def wait_for(predicate: Any, timeout: float, what: str, log: Path | None = None) -> Any:
    """Poll ``predicate`` until truthy; on timeout fail with ``what`` and the board's console."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.2)


class Console:
    """A terminal on UART0 (one connection at a time, like a serial port). What the board sent is
    read from its capture, DIR/uart.log, which also holds what it sent before anyone connected."""

    def __init__(self, target: EmulatedBoard) -> None:
        self.log = target.state / "uart.log"
        self.sock = socket.create_connection(("127.0.0.1", target.port), timeout=10)
        self.sock.sendall(b"\r")  # a console's first byte: not esptool's SLIP frame start

    def text(self) -> str:
        return uart(self.log.parent)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def uart(state: Path) -> str:
    path = state / "uart.log"
    return path.read_text(errors="replace") if path.exists() else ""


def write_world(state: Path, **world: Any) -> None:
    state.mkdir(parents=True, exist_ok=True)
    path = state / "world.json"
    tmp = state / "world.json.tmp"
    tmp.write_text(json.dumps(world))
    tmp.replace(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The board files as `make flash` copies them (compiled .mpy, boot.py and main.py)."""
    out = tmp_path_factory.mktemp("built")
    subprocess.run([sys.executable, str(ROOT / "firmware" / "flash.py"), "--build", str(out)],
                   check=True, capture_output=True, timeout=120, cwd=ROOT)
    return out


def preflashed(state: Path, image_path: Path, built_dir: Path, config: dict[str, Any]) -> None:
    """A state directory as `make flash` leaves it: image at 0x1000, board files and config.json."""
    chip = Chip(state)
    chip.flash.program(0x1000, image_path.read_bytes())
    chip.flash.flush()
    chip.flash.close()
    fs = state / "fs"
    for src in built_dir.rglob("*"):
        if src.is_file():
            dst = fs / src.relative_to(built_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    example = json.loads((ROOT / "firmware" / "config.example.json").read_text())
    (fs / "config.json").write_text(json.dumps({**example, **config}))


@pytest.fixture
def console_board(tmp_path: Path) -> Iterator[list[EmulatedBoard]]:
    """Boards started by a test (stopped at the end)."""
    _ensure_node_modules()
    boards: list[EmulatedBoard] = []
    yield boards
    for b in boards:
        b.stop()


def test_flash_reset_online_stores_readings_once_and_answers_a_command(
        board: EmulatedBoard, image: Path, gateway: GatewayProcess, tmp_path: Path) -> None:  # noqa: F811
    """make flash -> reset -> boot.py, main.py -> Wi-Fi -> the gateway: readings stored exactly once."""
    write_world(board.state, ap={"ssid": SSID, "password": SECRET_PASSWORD}, dht=HOT)
    token = gateway.register("BOARD-01")
    result = make_flash(PORT=board.url, MICROPYTHON_BIN=str(image), DEVICE_ID="BOARD-01", WIFI_SSID=SSID,
                        WIFI_PASSWORD=SECRET_PASSWORD, GATEWAY_URL=gateway.device_url, TOKEN=token,
                        SENSOR="dht22", SENSOR_PIN="27", INTERVAL_S="2")
    assert result.returncode == 0, result.stdout + result.stderr
    console = Console(board)
    try:
        seqs = wait_for(lambda: (s := gateway.seqs("BOARD-01")) and len(s) >= 3 and s, 90,
                        "three readings stored", console.log)
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # no gap, no reading stored twice
        result_cmd = gateway.send_command("BOARD-01", "set_interval", {"seconds": 4})
        assert result_cmd["ok"] is True, result_cmd
        wait_for(lambda: "command set_interval -> True" in console.text(), 20, "the command in the log", console.log)
        text = console.text()
        assert "online: last_seq" in text, text[-2000:]
        # the gateway goes away: the board buffers, retries with backoff, and delivers when it is back
        gateway.stop()
        offline_before = text.count("offline:")
        wait_for(lambda: console.text().count("offline:") >= offline_before + 3, 60,
                 "reconnect attempts while the gateway is down", console.log)
        backoffs = [int(ms) for ms in re.findall(r"offline: .*-> backoff (\d+) ms", console.text())]
        assert len(backoffs) >= 2 and max(backoffs[-2:]) > min(backoffs[-3:]), backoffs  # it backs off
        stored_before = len(gateway.seqs("BOARD-01"))
        gateway.start()
        seqs = wait_for(lambda: (s := gateway.seqs("BOARD-01")) and len(s) >= stored_before + 3 and s, 90,
                        "the readings buffered during the outage", console.log)
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        # Ctrl-C stops main.py into the REPL, as on the board, and the board then answers mpremote
        console.send(b"\x03")
        wait_for(lambda: "KeyboardInterrupt" in console.text() and ">>> " in console.text(), 20,
                 "main.py interrupted into the REPL", console.log)
    finally:
        console.close()
    # The flashed app's live heap on the board: imported and constructed from /config.json after the
    # raw REPL's soft reset, measured after a collection at the top level (the only place this port
    # collects: docs/firmware.md, "Heap"). It must leave a margin below the ESP32's 110 KiB heap.
    run = subprocess.run([sys.executable, "-m", "mpremote", "connect", board.url,
                          "exec", "import machine, os\nprint('RAN', machine.reset_cause(), 'ring.bin' in os.listdir())",
                          "+", "exec", "import app, config\nnode = app.App(config.load(config.PATH), config.PATH)",
                          "+", "exec", "import gc\ngc.collect()",
                          "+", "exec", "print('HEAP', gc.mem_alloc())"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert re.search(r"^RAN 1 True", run.stdout, re.M), run.stdout + run.stderr
    heap = re.search(r"^HEAP (\d+)", run.stdout, re.M)
    assert heap, run.stdout + run.stderr
    print(f"live heap of the flashed app after import and construction: {heap.group(1)} bytes")
    assert int(heap.group(1)) < 0.85 * HEAP_BYTES, heap.group(1)  # a 15 % margin for the loop's transients
    stored = gateway.seqs("BOARD-01")
    assert stored == list(range(1, len(stored) + 1)), stored


def test_wrong_wifi_password_is_logged_without_a_crash_loop(
        console_board: list[EmulatedBoard], image: Path, built: Path, tmp_path: Path) -> None:  # noqa: F811
    state = tmp_path / "board"
    write_world(state, ap={"ssid": SSID, "password": SECRET_PASSWORD})
    preflashed(state, image, built, {"wifi_ssid": SSID, "wifi_password": "not-the-password",
                                     "gateway_url": "ws://127.0.0.1:9/v1/device", "device_id": "BOARD-02",
                                     "token": "ewt_" + "x" * 32, "interval_s": 2})
    b = EmulatedBoard(state)
    console_board.append(b)
    wait_for(lambda: uart(state).count("wifi: not connected (wrong password)") >= 2, 30,
             "two failed attempts, each logged with its reason", state / "uart.log")
    text = uart(state)
    assert "Traceback" not in text, text[-2000:]
    assert text.count("rst:") == 1 and text.count("] boot ") == 1, text[-2000:]  # no reset: no crash loop
    assert b.log.read_text().count("booted:") == 1, b.log.read_text()
    assert SECRET_PASSWORD not in text and "not-the-password" not in text


def power_cut(target: EmulatedBoard) -> None:
    """Pull the plug: SIGKILL the interpreter (node) and the board process at once."""
    children = subprocess.run(["pgrep", "-P", str(target.proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    target.proc.kill()
    target.proc.wait(10)


def test_power_cut_mid_stream_loses_no_acknowledged_reading_and_stores_none_twice(
        console_board: list[EmulatedBoard], image: Path, built: Path, gateway: GatewayProcess,  # noqa: F811
        tmp_path: Path) -> None:
    state = tmp_path / "board"
    write_world(state, ap={"ssid": SSID, "password": SECRET_PASSWORD}, dht=HOT)
    token = gateway.register("BOARD-03")
    preflashed(state, image, built, {"wifi_ssid": SSID, "wifi_password": SECRET_PASSWORD, "interval_s": 2,
                                     "gateway_url": gateway.device_url, "device_id": "BOARD-03", "token": token})
    first = EmulatedBoard(state)
    console_board.append(first)
    before = wait_for(lambda: (s := gateway.seqs("BOARD-03")) and len(s) >= 3 and s, 60, "readings before the cut",
                      state / "uart.log")
    power_cut(first)
    cut_at = len(gateway.seqs("BOARD-03"))
    again = EmulatedBoard(state)
    console_board.append(again)
    after = wait_for(lambda: (s := gateway.seqs("BOARD-03")) and len(s) >= cut_at + 3 and s, 60,
                     "readings after the power cut", state / "uart.log")
    assert after[:len(before)] == before
    assert after == list(range(1, len(after) + 1)), after  # nothing lost, nothing stored twice
    assert uart(state).count("rst:0x1 (POWERON_RESET)") == 2


def device_status(gateway: GatewayProcess, device_id: str) -> dict[str, Any]:
    """The device's latest status frame, as the dashboard's snapshot shows it."""
    from websockets.sync.client import connect

    with connect(gateway.url + "/v1/dashboard", max_size=None, open_timeout=10) as ws:
        while True:
            msg = json.loads(ws.recv(timeout=10))
            if msg["t"] == "snapshot":
                for device in msg["devices"]:
                    if device["id"] == device_id:
                        return dict(device.get("status") or {})
                return {}


def test_a_hung_sensor_read_resets_the_board_and_the_next_status_says_watchdog(
        console_board: list[EmulatedBoard], image: Path, built: Path, gateway: GatewayProcess,  # noqa: F811
        tmp_path: Path) -> None:
    state = tmp_path / "board"
    write_world(state, ap={"ssid": SSID, "password": SECRET_PASSWORD}, dht={"hang_ms": 600000})
    token = gateway.register("BOARD-04")
    preflashed(state, image, built, {"wifi_ssid": SSID, "wifi_password": SECRET_PASSWORD, "interval_s": 2,
                                     "watchdog_s": 10, "gateway_url": gateway.device_url, "device_id": "BOARD-04",
                                     "token": token})
    b = EmulatedBoard(state)
    console_board.append(b)
    wait_for(lambda: "rst:0x7 (TG0WDT_SYS_RESET)" in uart(state), 30, "a watchdog reset", state / "uart.log")
    write_world(state, ap={"ssid": SSID, "password": SECRET_PASSWORD}, dht=HOT)  # the bus recovers
    wait_for(lambda: device_status(gateway, "BOARD-04").get("reset") == "watchdog", 30,
             "a status frame with the reset cause", state / "uart.log")
    assert "reset watchdog" in uart(state)
    wait_for(lambda: gateway.seqs("BOARD-04"), 30, "readings after the reset", state / "uart.log")


def test_deep_sleep_mode_buffers_across_sleeps_and_delivers_once_wifi_is_back(
        console_board: list[EmulatedBoard], image: Path, built: Path, gateway: GatewayProcess,  # noqa: F811
        tmp_path: Path) -> None:
    state = tmp_path / "board"
    write_world(state, ap=None, dht=HOT)  # no access point in range yet
    token = gateway.register("BOARD-05")
    preflashed(state, image, built, {"wifi_ssid": SSID, "wifi_password": SECRET_PASSWORD, "interval_s": 2,
                                     "deep_sleep": True, "gateway_url": gateway.device_url, "device_id": "BOARD-05",
                                     "token": token})
    b = EmulatedBoard(state)
    console_board.append(b)
    wait_for(lambda: uart(state).count("rst:0x5 (DEEPSLEEP_RESET)") >= 3, 60, "three wakes from deep sleep",
             state / "uart.log")
    boots = set(re.findall(r"\] boot ([0-9a-f]{8}) ", uart(state)))
    assert len(boots) == 1, boots  # one boot id across deep sleeps (RTC memory)
    assert not gateway.seqs("BOARD-05")
    write_world(state, ap={"ssid": SSID, "password": SECRET_PASSWORD}, dht=HOT)
    seqs = wait_for(lambda: (s := gateway.seqs("BOARD-05")) and len(s) >= 4 and s, 90,
                    "the readings buffered across the sleeps", state / "uart.log")
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert "reset deep_sleep" in uart(state)


def test_a_ds18b20_node_reads_the_one_wire_bus_and_delivers(
        console_board: list[EmulatedBoard], image: Path, built: Path, gateway: GatewayProcess,  # noqa: F811
        tmp_path: Path) -> None:
    state = tmp_path / "board"
    write_world(state, ap={"ssid": SSID, "password": SECRET_PASSWORD}, dht=HOT, ds18b20={"crc_rate": 0.3})
    token = gateway.register("BOARD-06")
    preflashed(state, image, built, {"wifi_ssid": SSID, "wifi_password": SECRET_PASSWORD, "interval_s": 2,
                                     "sensor": "ds18b20", "deadband": {}, "gateway_url": gateway.device_url,
                                     "device_id": "BOARD-06", "token": token})
    console_board.append(EmulatedBoard(state))
    seqs = wait_for(lambda: (s := gateway.seqs("BOARD-06")) and len(s) >= 3 and s, 60, "DS18B20 readings stored",
                    state / "uart.log")
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    temps = [json.loads(row[0])["temperature"]
             for row in gateway.query("SELECT metrics FROM readings WHERE device_id=?", ("BOARD-06",))]
    assert all(25.0 < t < 60.0 and t != 85.0 for t in temps), temps  # the climate + 20 C, never power-on 85
    assert "Traceback" not in uart(state)
