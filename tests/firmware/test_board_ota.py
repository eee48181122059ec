"""Over-the-air updates on the emulated ESP32 (docs/ota.md): the board runs what `make flash`
lays out (boot.py, slots.mpy, the app in slot A) on MicroPython 1.27, and a scripted gateway on
loopback (tests/firmware/ota_gateway.py) speaks the OTA contract: offer, chunk requests, state frames.

Each case flashes a fresh state directory from the same image and build (module fixtures), and
cuts the power by killing the board process (test_board_app.power_cut).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.ota_gateway import OtaGateway
from tests.firmware.test_board_app import (
    SSID,
    built,  # noqa: F401 - fixture
    power_cut,
    preflashed,
    uart,
    wait_for,
    write_world,
)
from tests.firmware.test_flash import ROOT, SECRET_PASSWORD, EmulatedBoard, _ensure_node_modules
from tests.helpers.ota_release import ReleaseKey, offer_args

pytestmark = pytest.mark.timeout(240)

_spec = importlib.util.spec_from_file_location("edgewire_flash_ota", ROOT / "firmware" / "flash.py")
assert _spec is not None and _spec.loader is not None
flash = importlib.util.module_from_spec(_spec)
sys.modules["edgewire_flash_ota"] = flash
_spec.loader.exec_module(flash)

KEY = ReleaseKey()
DEVICE = "OTA-01"
TOKEN = "ewt_" + "o" * 32


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("image") / "micropython.bin"
    subprocess.run([sys.executable, str(ROOT / "firmware" / "tools" / "make_test_image.py"), str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def release(built: Path) -> dict[str, bytes]:  # noqa: F811
    """The app of the build, as a release's flat file names (what `ota upload` sends)."""
    staged = {str(p.relative_to(built)): p for p in built.rglob("*") if p.is_file()}
    return {name: path.read_bytes() for name, path in flash.release_files(staged).items()}


def compiled_app(tmp: Path, source: str) -> bytes:
    """app.mpy compiled from ``source`` (a broken or altered app for a release)."""
    src = tmp / "app.py"
    src.write_text(source)
    flash.compile_mpy(src, tmp / "app.mpy", "app.py")
    return (tmp / "app.mpy").read_bytes()


class Bench:
    """One flashed board and its scripted gateway; ``start()`` powers the board on (again)."""

    def __init__(self, state: Path, gateway: OtaGateway, image_path: Path, built_dir: Path, **config: Any) -> None:
        self.state = state
        self.gateway = gateway
        self.boards: list[EmulatedBoard] = []
        write_world(state, ap={"ssid": SSID, "password": SECRET_PASSWORD})
        preflashed(state, image_path, built_dir, {
            "wifi_ssid": SSID, "wifi_password": SECRET_PASSWORD, "gateway_url": gateway.url, "device_id": DEVICE,
            "token": TOKEN, "interval_s": 30, "ota_pubkey": KEY.pubkey, **config})

    def start(self) -> EmulatedBoard:
        board = EmulatedBoard(self.state)
        self.boards.append(board)
        return board

    @property
    def fs(self) -> Path:
        return self.state / "fs"

    def pointer(self, name: str) -> dict[str, Any] | None:
        path = self.fs / name
        return json.loads(path.read_text()) if path.exists() else None

    def wait_online(self, welcomes: int) -> None:
        wait_for(lambda: self.gateway.welcomes >= welcomes and self.gateway.online(), 60,
                 f"welcome number {welcomes}", self.state / "uart.log")

    def wait_state(self, release: str, state: str, timeout: float = 90) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((s for s in self.gateway.states if s["release"] == release and s["state"] == state), None)
        got: dict[str, Any] = wait_for(found, timeout, f"{release} {state}", self.state / "uart.log")
        return got

    def slot_files(self, slot: str) -> dict[str, bytes]:
        root = self.fs / f"app_{slot}"
        return {str(p.relative_to(root)).replace("/", "."): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def bench(tmp_path: Path, image: Path, built: Path) -> Iterator[Bench]:  # noqa: F811
    _ensure_node_modules()
    gateway = OtaGateway(DEVICE).start()
    b = Bench(tmp_path / "board", gateway, image, built)
    try:
        yield b
    finally:
        for board in b.boards:
            board.stop()
        gateway.stop()


def test_update_trial_good(bench: Bench, release: dict[str, bytes]) -> None:
    gateway = bench.gateway
    gateway.releases["esp32-0.2.0"] = release
    bench.start()
    bench.wait_online(1)
    started = time.monotonic()
    result = gateway.offer(offer_args(KEY, "0.2.0", release))
    assert result["ok"] is True and result["msg"] == "downloading esp32-0.2.0", result
    bench.wait_state("esp32-0.2.0", "good")
    took = time.monotonic() - started
    assert gateway.state_names("esp32-0.2.0") == ["downloading", "verifying", "trial", "good"]
    assert bench.pointer("app_cur") == {"slot": "b", "release": "esp32-0.2.0"}
    assert bench.pointer("app_try") is None and not (bench.fs / "ota_dl").exists()
    assert bench.slot_files("b") == release  # the whole release, nothing else
    status = wait_for(lambda: next((s for s in gateway.statuses if s.get("fw") == "0.2.0"), None), 30,
                      "a status frame from the new app", bench.state / "uart.log")
    assert status["kind"] == "esp32"
    text = uart(bench.state)
    assert "ota: trial boot 1 of 3 for esp32-0.2.0" in text and "trial good: esp32-0.2.0" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    size = sum(len(v) for v in release.values())
    print(f"\nupdate of a {size}-byte app ({len(release)} files): offer to good in {took:.1f} s on the emulated "
          f"board; {gateway.ota_bytes} bytes of OTA frames ({len(gateway.gets)} chunk requests)")
    # offered again: already running
    again = gateway.offer(offer_args(KEY, "0.2.0", release))
    assert again["ok"] is True and again["data"] == {"state": "good"}, again


def test_a_corrupted_chunk_or_a_bad_signature_is_refused_and_the_old_app_keeps_running(
        bench: Bench, release: dict[str, bytes]) -> None:
    gateway = bench.gateway
    gateway.releases["esp32-0.2.0"] = release
    gateway.corrupt = ("app.mpy", 2048)
    bench.start()
    bench.wait_online(1)
    bad = gateway.offer({**offer_args(KEY, "0.2.0", release), "sig": ReleaseKey().sign("x")})
    assert bad["ok"] is False and bad["data"] == {"code": "bad_signature"}, bad
    assert not gateway.gets and not gateway.states  # nothing downloaded, nothing reported
    result = gateway.offer(offer_args(KEY, "0.2.0", release))
    assert result["ok"] is True, result
    failed = bench.wait_state("esp32-0.2.0", "failed")
    assert failed["reason"] == "bad_hash"
    assert gateway.state_names("esp32-0.2.0") == ["downloading", "failed"]
    assert bench.pointer("app_cur") == {"slot": "a", "release": "esp32-0.1.0"}
    assert bench.pointer("app_try") is None and not (bench.fs / "ota_dl").exists()
    assert not (bench.fs / "app_b").exists()  # the partial download is wiped
    pong = gateway.command("ping", {})  # the old app runs on, on the same connection
    assert pong["ok"] is True and pong["msg"] == "pong", pong
    assert gateway.welcomes == 1 and "rst:" not in uart(bench.state).split("failed: bad_hash")[-1]


def test_power_cuts_during_the_download_and_after_the_switch_leave_a_working_app(
        bench: Bench, release: dict[str, bytes]) -> None:
    gateway = bench.gateway
    gateway.releases["esp32-0.2.0"] = release
    slot_a = bench.slot_files("a")
    board = bench.start()
    bench.wait_online(1)
    cut = threading.Event()

    def cut_after_some(msg: dict[str, Any]) -> None:
        if len(gateway.gets) == 6 and not cut.is_set():
            power_cut(board)  # during the download: some files whole, one partial
            cut.set()

    gateway.on_get = cut_after_some
    gateway.offer(offer_args(KEY, "0.2.0", release))
    wait_for(cut.is_set, 60, "the power cut mid-download", bench.state / "uart.log")
    gateway.on_get = None
    before = len(gateway.gets)
    assert bench.pointer("app_cur") == {"slot": "a", "release": "esp32-0.1.0"} and bench.pointer("app_try") is None
    gateway.hold_after = "verifying"  # the trial app will wait for its welcome: time to cut the power again
    board = bench.start()
    bench.wait_state("esp32-0.2.0", "verifying")
    resumed = gateway.gets[before]
    assert (resumed["file"], resumed["off"]) != (gateway.gets[0]["file"], 0), resumed  # resumed, not restarted
    assert sum(1 for g in gateway.gets if (g["file"], g["off"]) == (resumed["file"], resumed["off"])) <= 2
    wait_for(lambda: "ota: trial boot 1 of 3" in uart(bench.state), 60, "the trial boot", bench.state / "uart.log")
    power_cut(board)  # after the switch, before good
    assert bench.pointer("app_cur") == {"slot": "a", "release": "esp32-0.1.0"}
    assert (bench.pointer("app_try") or {}).get("slot") == "b"
    gateway.release_welcome.set()
    bench.start()
    bench.wait_state("esp32-0.2.0", "good")
    assert bench.pointer("app_cur") == {"slot": "b", "release": "esp32-0.2.0"}
    assert bench.slot_files("b") == release  # never a mix of two releases
    assert bench.slot_files("a") == slot_a  # the fallback was never touched
    assert "ota: trial boot 2 of 3 for esp32-0.2.0" in uart(bench.state)


def test_a_new_app_that_crashes_on_import_is_rolled_back_after_three_boots(
        bench: Bench, release: dict[str, bytes], tmp_path: Path) -> None:
    gateway = bench.gateway
    broken = {**release, "app.mpy": compiled_app(tmp_path, "raise ImportError('this release is broken')\n")}
    gateway.releases["esp32-0.3.0"] = broken
    bench.start()
    bench.wait_online(1)
    assert gateway.offer(offer_args(KEY, "0.3.0", broken))["ok"] is True
    rolled = bench.wait_state("esp32-0.3.0", "rolled_back", 150)
    assert rolled["reason"] == "crashed"
    assert gateway.state_names("esp32-0.3.0") == ["downloading", "verifying", "rolled_back"]
    text = uart(bench.state)
    assert text.count("this release is broken") == 3 and "failed 3 boots: back to slot a" in text, text[-3000:]
    assert bench.pointer("app_cur") == {"slot": "a", "release": "esp32-0.1.0"} and bench.pointer("app_try") is None
    wait_for(lambda: not (bench.fs / "ota_result").exists(), 30, "the fallback's report cleared",
             bench.state / "uart.log")
    assert gateway.statuses[-1]["fw"] == "0.1.0"


def test_a_new_app_that_cannot_reach_the_gateway_is_rolled_back(
        tmp_path: Path, image: Path, built: Path, release: dict[str, bytes]) -> None:  # noqa: F811
    _ensure_node_modules()
    source = (ROOT / "firmware" / "app.py").read_text()
    assert 'WSClient(self.cfg["gateway_url"]' in source
    lost = {**release, "app.mpy": compiled_app(
        tmp_path, source.replace('WSClient(self.cfg["gateway_url"]', 'WSClient("ws://127.0.0.1:9/v1/device"'))}
    gateway = OtaGateway(DEVICE).start()
    bench = Bench(tmp_path / "board", gateway, image, built, ota_trial_s=5)
    try:
        gateway.releases["esp32-0.4.0"] = lost
        bench.start()
        bench.wait_online(1)
        assert gateway.offer(offer_args(KEY, "0.4.0", lost))["ok"] is True
        rolled = bench.wait_state("esp32-0.4.0", "rolled_back", 150)
        assert rolled["reason"] == "no_gateway"
        text = uart(bench.state)
        assert text.count("no welcome from the gateway within 5 s on trial") == 3, text[-3000:]
        assert bench.pointer("app_cur") == {"slot": "a", "release": "esp32-0.1.0"}
    finally:
        for board in bench.boards:
            board.stop()
        gateway.stop()
