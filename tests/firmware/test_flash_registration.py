"""Issue 22: a failed flash never leaves a registered device behind. The port and the tools are checked
before the gateway registers anything, and a failure after the registration undoes it (a real
gateway; firmware/flash.py as `make flash` runs it)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.firmware.test_flash import FLASH_VARIABLES, ROOT, EmulatedBoard, board, image  # noqa: F401 - fixtures
from tests.helpers.gateway import GatewayProcess

_spec = importlib.util.spec_from_file_location("edgewire_flash_registration", ROOT / "firmware" / "flash.py")
assert _spec is not None and _spec.loader is not None
flash_module = importlib.util.module_from_spec(_spec)
sys.modules["edgewire_flash_registration"] = flash_module  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(flash_module)


def flash(**variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in FLASH_VARIABLES}
    return subprocess.run([sys.executable, str(ROOT / "firmware" / "flash.py")], cwd=ROOT, env={**env, **variables},
                          capture_output=True, text=True, timeout=600)


def registered(gw: GatewayProcess) -> list[str]:
    return [d["device_id"] for d in json.loads(gw.cli("devices", "list", "--json").stdout)]


def closed_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings(gw: GatewayProcess, image: Path, port: str, device_id: str) -> dict[str, str]:  # noqa: F811
    return dict(PORT=port, MICROPYTHON_BIN=str(image), DEVICE_ID=device_id, WIFI_SSID="lab", WIFI_PASSWORD="",
                GATEWAY_URL=gw.device_url, ADMIN_TOKEN_FILE=str(gw.data_dir / "admin.token"), BAUD="115200")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_bad_port_registers_nothing(gateway: GatewayProcess, image: Path, tmp_path: Path) -> None:  # noqa: F811
    for port in (f"socket://127.0.0.1:{closed_port()}", str(tmp_path / "ttyUSB9")):  # a typo: no such device
        result = flash(**settings(gateway, image, port, "TYPO-1"))
        line = one_error_line(result)
        assert f"cannot open {port}" in line and "PORT=/dev/ttyUSB0" in line, line
        assert "registering" not in result.stdout, result.stdout
        assert registered(gateway) == []


def test_a_failure_after_registering_undoes_the_registration(gateway: GatewayProcess,
                                                             image: Path) -> None:  # noqa: F811
    """The port opens but no ESP32 answers there (a wrong device): esptool fails after the registration."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        result = flash(**settings(gateway, image, f"socket://127.0.0.1:{server.getsockname()[1]}", "WRONG-1"))
    assert "registering WRONG-1" in result.stdout, result.stdout
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: no ESP32 answered"), result.stderr
    assert "the registration of WRONG-1 was undone" in result.stderr, result.stderr
    assert registered(gateway) == []


def test_a_flash_that_works_stays_registered(gateway: GatewayProcess, board: EmulatedBoard,  # noqa: F811
                                             image: Path) -> None:  # noqa: F811
    result = flash(**{**settings(gateway, image, board.url, "GOOD-1"), "BAUD": "460800"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert registered(gateway) == ["GOOD-1"]



def test_the_release_key_comes_from_the_gateway_once_it_has_one(
        gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """make flash asks the gateway for ota_pubkey (the admin request) unless OTA_PUBKEY is given; before the
    gateway has a key the node is flashed without one, with one note (the key is never made over the network)."""
    env = dict(PORT="socket://127.0.0.1:9", DEVICE_ID="KEY-1", WIFI_SSID="lab", WIFI_PASSWORD="",
               GATEWAY_URL=gateway.device_url, ADMIN_TOKEN_FILE=str(gateway.data_dir / "admin.token"))
    assert flash_module.fetch_pubkey(flash_module.load_settings(env)) is None
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and "refuse updates" in note and "ota pubkey" in note, note
    assert not (gateway.data_dir / "ota-signing.pem").exists()
    key = gateway.cli("ota", "pubkey").stdout.strip()  # creates the key on the gateway's host
    assert flash_module.fetch_pubkey(flash_module.load_settings(env)) == key
    given = "04" + "cd" * 64  # OTA_PUBKEY wins; the gateway is not asked
    unreachable = {**env, "GATEWAY_URL": f"ws://127.0.0.1:{closed_port()}/v1/device", "OTA_PUBKEY": given}
    assert flash_module.fetch_pubkey(flash_module.load_settings(unreachable)) == given
    with_token = {k: v for k, v in env.items() if k != "ADMIN_TOKEN_FILE"} | {"TOKEN": "ewt_" + "a" * 32}
    capsys.readouterr()
    assert flash_module.fetch_pubkey(flash_module.load_settings(with_token)) is None
    assert "no OTA_PUBKEY and no admin token" in capsys.readouterr().out
