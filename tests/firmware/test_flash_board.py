"""The emulated ESP32 board itself: ROM loader details, NOR flash, the REPL's filesystem errors."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

from simulator.esp32 import slip
from simulator.esp32.chip import Chip, valid_boot_image
from simulator.esp32.loader import (
    FLASH_BEGIN,
    FLASH_DATA,
    FLASH_END,
    MEM_END,
    READ_REG,
    SYNC,
    LoaderSession,
    esp_checksum,
)
from tests.firmware.test_flash import ROOT, EmulatedBoard, board, image  # noqa: F401 - fixtures

SYNC_DATA = b"\x07\x07\x12\x20" + 32 * b"\x55"


def request(op: int, data: bytes = b"", chk: int = 0) -> bytes:
    return struct.pack("<BBHI", 0, op, len(data), chk) + data


def status(reply: bytes, rom: bool = True) -> tuple[int, int]:
    body = reply[8:]
    st = body[-4:-2] if rom else body[-2:]
    return st[0], st[1]


def synced(tmp_path: Path) -> LoaderSession:
    session = LoaderSession(Chip(tmp_path / "chip"))
    replies = session.handle(request(SYNC, SYNC_DATA))
    assert len(replies) == 8 and all(struct.unpack("<I", r[4:8])[0] != 0 for r in replies)
    return session


def test_slip_round_trip_with_escapes() -> None:
    payload = bytes([0xC0, 0xDB, 0x01, 0xC0])
    dec = slip.Decoder()
    assert dec.feed(b"noise" + slip.encode(payload) + slip.encode(b"x")) == [payload, b"x"]
    assert dec.noise == 5


def test_rom_answers_nothing_before_sync(tmp_path: Path) -> None:
    session = LoaderSession(Chip(tmp_path / "chip"))
    assert session.handle(request(READ_REG, struct.pack("<I", 0x40001000))) == []
    session.handle(request(SYNC, SYNC_DATA))
    (reply,) = session.handle(request(READ_REG, struct.pack("<I", 0x40001000)))
    assert struct.unpack("<I", reply[4:8])[0] == 0x00F01D83  # ESP32 chip magic
    assert status(reply) == (0, 0)


def test_bad_checksum_is_refused_and_nothing_written(tmp_path: Path) -> None:
    session = synced(tmp_path)
    session.handle(request(FLASH_BEGIN, struct.pack("<IIII", 0x1000, 1, 0x400, 0x1000)))
    block = b"\x12" * 0x400
    header = struct.pack("<IIII", len(block), 0, 0, 0)
    (reply,) = session.handle(request(FLASH_DATA, header + block, esp_checksum(block) ^ 1))
    assert status(reply) == (1, 0x07)  # ROM: invalid CRC
    assert session.chip.flash.read(0x1000, 4) == b"\xff" * 4
    (reply,) = session.handle(request(FLASH_DATA, header + block, esp_checksum(block)))
    assert status(reply) == (0, 0)
    assert session.chip.flash.read(0x1000, 4) == b"\x12" * 4


def test_nor_flash_only_clears_bits(tmp_path: Path) -> None:
    flash = Chip(tmp_path / "chip").flash
    flash.program(0x2000, b"\xf0\x0f")
    flash.program(0x2000, b"\x3c\x3c")  # writing again without an erase ANDs
    assert flash.read(0x2000, 2) == b"\x30\x0c"
    flash.erase(0x2001, 1)  # a whole 4 KiB sector goes back to 0xFF
    assert flash.read(0x2000, 0x1000) == b"\xff" * 0x1000


def test_stub_upload_then_reboot_request(tmp_path: Path) -> None:
    session = synced(tmp_path)
    replies = session.handle(request(MEM_END, struct.pack("<II", 0, 0x400BE598)))
    assert replies[-1] == b"OHAI" and session.stub
    (reply,) = session.handle(request(FLASH_END, struct.pack("<I", 0)))  # 0: reboot
    assert status(reply, rom=False) == (0, 0) and session.rebooted


def test_boot_check_rejects_a_corrupted_image(tmp_path: Path, image: Path) -> None:  # noqa: F811
    chip = Chip(tmp_path / "chip")
    assert valid_boot_image(chip.flash) == (False, "flash read err, 1000")
    data = bytearray(image.read_bytes())
    data[100] ^= 0xFF
    chip.flash.program(0x1000, bytes(data))
    ok, reason = valid_boot_image(chip.flash)
    assert not ok and reason.startswith("csum err")


def esptool(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "esptool", "--chip", "esp32", "--port", port, *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def mpremote(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_rom_loader_path_and_repl(board: EmulatedBoard, image: Path) -> None:  # noqa: F811
    """esptool --no-stub (the ROM loader only), then MicroPython answers mpremote."""
    out = esptool(board.url, "--no-stub", "write-flash", "0x1000", str(image))
    assert out.returncode == 0 and "Hash of data verified" in out.stdout, out.stdout + out.stderr
    data = image.read_bytes()
    assert (board.state / "flash.bin").read_bytes()[0x1000:0x1000 + len(data)] == data
    # the ROM cannot erase the whole chip: esptool says so instead of pretending
    erase = esptool(board.url, "--no-stub", "erase-flash")
    assert erase.returncode != 0 and "does not support" in erase.stderr
    # after the session the board runs MicroPython; filesystem errors carry MicroPython errnos
    res = mpremote(board.url, "exec", "import os, errno\ntry:\n os.stat('nope')\nexcept OSError as e:\n"
                                      " print('ENOENT' if e.errno == errno.ENOENT else e.errno)")
    assert res.returncode == 0 and "ENOENT" in res.stdout, res.stdout + res.stderr
    missing = mpremote(board.url, "fs", "cat", ":missing.txt")
    assert missing.returncode != 0 and "No such file" in (missing.stdout + missing.stderr)


def test_stub_read_flash_and_vfs_erase(board: EmulatedBoard, image: Path, tmp_path: Path) -> None:  # noqa: F811
    """The flasher stub streams flash back with acks and an MD5; erasing the vfs region wipes the files."""
    out = esptool(board.url, "write-flash", "0x1000", str(image))
    assert out.returncode == 0, out.stdout + out.stderr
    res = mpremote(board.url, "exec", "f = open('data.txt', 'w'); f.write('kept until erased'); f.close()")
    assert res.returncode == 0 and (board.state / "fs" / "data.txt").exists(), res.stdout + res.stderr
    back = tmp_path / "readback.bin"
    out = esptool(board.url, "read-flash", "0x1000", "0x12000", str(back))
    assert out.returncode == 0, out.stdout + out.stderr
    assert back.read_bytes() == (board.state / "flash.bin").read_bytes()[0x1000:0x13000]
    assert (board.state / "fs" / "data.txt").exists()  # reading or writing the app leaves the files
    out = esptool(board.url, "erase-region", "0x200000", "0x1000")
    assert out.returncode == 0, out.stdout + out.stderr
    listing = mpremote(board.url, "fs", "ls", ":")
    assert listing.returncode == 0 and "data.txt" not in listing.stdout and "boot.py" in listing.stdout
