"""The emulated ESP32 chip: identity (eFuses, MAC), the registers esptool reads, and SPI flash.

The register values are those of an ESP32-D0WD-V3 (revision v3.1, 40 MHz crystal) as esptool 5
decodes them in esptool/targets/esp32.py. The flash is a 4 MiB NOR chip (JEDEC id C8 40 16,
GigaDevice GD25Q32) backed by `flash.bin`: erase sets 4 KiB sectors to 0xFF, program can only
clear bits (new = old AND data), exactly like NOR flash, so writing without erasing corrupts.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path

from simulator.esp32.errors import StateError

FLASH_SIZE = 4 * 1024 * 1024
SECTOR = 0x1000
JEDEC_ID = (0xC8, 0x40, 0x16)  # GigaDevice, GD25Q32 (4 MiB)
ESPRESSIF_OUI = (0x24, 0x0A, 0xC4)
# MicroPython ESP32_GENERIC partition table (4 MiB): the filesystem ("vfs") partition.
VFS_OFFSET = 0x200000
VFS_SIZE = 0x200000

CHIP_DETECT_MAGIC_REG = 0x40001000
ESP32_MAGIC = 0x00F01D83
EFUSE_BASE = 0x3FF5A000
UART_CLKDIV_REG = 0x3FF40014
APB_CTL_DATE_REG = 0x3FF6607C
RTCCALICFG1_REG = 0x3FF5F06C
GPIO_STRAP_REG = 0x3FF44038
XTAL_HZ = 40_000_000

SPI_BASE = 0x3FF42000
SPI_CMD = SPI_BASE + 0x00
SPI_ADDR = SPI_BASE + 0x04
SPI_USR = SPI_BASE + 0x1C
SPI_USR1 = SPI_BASE + 0x20
SPI_USR2 = SPI_BASE + 0x24
SPI_MOSI_DLEN = SPI_BASE + 0x28
SPI_MISO_DLEN = SPI_BASE + 0x2C
SPI_W0 = SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18


def crc8_maxim(data: bytes) -> int:
    """CRC-8/MAXIM (reflected poly 0x31), the CRC stored next to the ESP32 factory MAC."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def _ensure_identity(state_dir: Path) -> bytes:
    """Load the board's MAC from board.json, creating a random Espressif one on first start."""
    path = state_dir / "board.json"
    try:
        if path.exists():
            doc = json.loads(path.read_text())
            mac = bytes(int(x, 16) for x in str(doc["mac"]).split(":"))
            if len(mac) != 6:
                raise ValueError("mac must have 6 bytes")
            return mac
        mac = bytes(ESPRESSIF_OUI) + secrets.token_bytes(3)
        path.write_text(json.dumps({"mac": ":".join(f"{b:02x}" for b in mac)}) + "\n")
        return mac
    except (OSError, ValueError, KeyError) as exc:
        raise StateError(f"cannot use {path}: {exc}; delete it to get a new MAC") from exc


class SpiFlash:
    """NOR flash image in `flash.bin` (memory-mapped, so every write is in the file at once)."""

    def __init__(self, path: Path, size: int = FLASH_SIZE) -> None:
        self.path = path
        self.size = size
        self.on_erase: Callable[[int, int], None] | None = None
        try:
            if not path.exists() or path.stat().st_size != size:
                with open(path, "wb") as f:
                    f.write(b"\xff" * size)
            self._file = open(path, "r+b")  # noqa: SIM115 - lives as long as the flash
            self._map = mmap.mmap(self._file.fileno(), size)
        except OSError as exc:
            raise StateError(f"cannot create or open {path}: {exc}") from exc

    def close(self) -> None:
        self._map.flush()
        self._map.close()
        self._file.close()

    def contains(self, offset: int, length: int) -> bool:
        return offset >= 0 and length >= 0 and offset + length <= self.size

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._map[offset : offset + length])

    def erase(self, offset: int, length: int) -> None:
        """Erase every 4 KiB sector touching [offset, offset+length)."""
        if length <= 0:
            return
        start = offset - offset % SECTOR
        end = min(self.size, -(-(offset + length) // SECTOR) * SECTOR)
        self._map[start:end] = b"\xff" * (end - start)
        if self.on_erase is not None:
            self.on_erase(start, end - start)

    def erase_all(self) -> None:
        self.erase(0, self.size)

    def program(self, offset: int, data: bytes) -> None:
        """NOR program: bits can only go from 1 to 0 (new = old AND data)."""
        old = self._map[offset : offset + len(data)]
        merged = (int.from_bytes(old, "little") & int.from_bytes(data, "little")).to_bytes(len(data), "little")
        self._map[offset : offset + len(data)] = merged

    def md5(self, offset: int, length: int) -> bytes:
        return hashlib.md5(self._map[offset : offset + length]).digest()

    def flush(self) -> None:
        self._map.flush()


class Chip:
    """Registers and identity of one ESP32; `flash` is its SPI flash."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.mac = _ensure_identity(state_dir)
        self.flash = SpiFlash(state_dir / "flash.bin")
        self._regs: dict[int, int] = {}
        self._flash_status = 0
        self._write_enabled = False
        self.reset()

    @property
    def mac_str(self) -> str:
        return ":".join(f"{b:02x}" for b in self.mac)

    def reset(self) -> None:
        """Power-on register values (what the ROM loader sees after a reset into download mode)."""
        m = self.mac
        efuse = [
            0,  # word0: flash crypt count 0, no read/write protection
            (m[2] << 24) | (m[3] << 16) | (m[4] << 8) | m[5],
            (crc8_maxim(m) << 16) | (m[0] << 8) | m[1],
            (1 << 15) | (1 << 13) | (1 << 9),  # rev bit0, 240 MHz rated, package D0WD
            (0x0B << 8) | 0x32,  # ADC vref calibration, 8 MHz clock calibration
            (1 << 24) | (1 << 20),  # minor revision 1, rev bit1
            0,  # word6: coding scheme none, secure boot off
        ]
        self._regs = {EFUSE_BASE + 4 * i: v for i, v in enumerate(efuse)}
        self._regs.update(
            {
                CHIP_DETECT_MAGIC_REG: ESP32_MAGIC,
                UART_CLKDIV_REG: XTAL_HZ // 115200,
                APB_CTL_DATE_REG: 0x96042000,  # bit 31: revision 3
                RTCCALICFG1_REG: 2048 << 7,  # with the 8 MHz eFuse value: ROM computes 40 MHz
                GPIO_STRAP_REG: 0x03,  # GPIO0 low at reset: DOWNLOAD_BOOT
            }
        )
        self._flash_status = 0
        self._write_enabled = False

    def set_baud(self, baud: int) -> None:
        """CHANGE_BAUDRATE: the UART divider follows, so esptool's crystal estimate stays 40 MHz."""
        if baud > 0:
            self._regs[UART_CLKDIV_REG] = XTAL_HZ // baud

    def read_reg(self, addr: int) -> int:
        return self._regs.get(addr, 0)

    def write_reg(self, addr: int, value: int, mask: int) -> None:
        if EFUSE_BASE <= addr < EFUSE_BASE + 0x100 or addr == CHIP_DETECT_MAGIC_REG:
            return  # read-only
        old = self._regs.get(addr, 0)
        self._regs[addr] = (old & ~mask | value & mask) & 0xFFFFFFFF
        if addr == SPI_CMD and self._regs[addr] & SPI_CMD_USR:
            self._spi_user_command()
            self._regs[SPI_CMD] &= ~SPI_CMD_USR

    def _spi_user_command(self) -> None:
        """Run the SPI "user command" esptool set up in the SPI1 registers (RDID, RDSR, ...)."""
        usr = self._regs.get(SPI_USR, 0)
        cmd = self._regs.get(SPI_USR2, 0) & 0xFF
        miso_bits = (self._regs.get(SPI_MISO_DLEN, 0) + 1) if usr & (1 << 28) else 0
        mosi_bits = (self._regs.get(SPI_MOSI_DLEN, 0) + 1) if usr & (1 << 27) else 0
        mosi = b"".join(struct.pack("<I", self._regs.get(SPI_W0 + 4 * i, 0)) for i in range(16))
        mosi = mosi[: (mosi_bits + 7) // 8]
        addr = 0
        if usr & (1 << 30):
            addr_len = ((self._regs.get(SPI_USR1, 0) >> 26) & 0x3F) + 1
            addr = self._regs.get(SPI_ADDR, 0) >> (32 - addr_len)
        reply = b""
        if cmd == 0x9F:  # RDID
            reply = bytes(JEDEC_ID)
        elif cmd in (0x05, 0x35, 0x15):  # RDSR, RDSR2, RDSR3
            shift = {0x05: 0, 0x35: 8, 0x15: 16}[cmd]
            reply = bytes([(self._flash_status >> shift) & 0xFF])
        elif cmd in (0x06, 0x50):  # WREN, WEVSR
            self._write_enabled = True
        elif cmd == 0x04:  # WRDI
            self._write_enabled = False
        elif cmd in (0x01, 0x31, 0x11) and self._write_enabled and mosi:  # WRSR*
            shift = {0x01: 0, 0x31: 8, 0x11: 16}[cmd]
            value = int.from_bytes(mosi, "little")
            width = 8 * len(mosi)
            self._flash_status &= ~(((1 << width) - 1) << shift)
            self._flash_status |= value << shift
        elif cmd == 0x5A:  # RDSFDP: header "SFDP", rev 1.6, one parameter header
            table = b"SFDP\x06\x01\x00\xff\x00\x06\x01\x10\x30\x00\x00\xff"
            reply = (table[addr:] + b"\xff" * 8)[:8] if addr < len(table) else b"\xff" * 8
        elif cmd == 0x03:  # READ
            reply = self.flash.read(addr, 4) if self.flash.contains(addr, 4) else b"\xff" * 4
        else:
            reply = b"\xff" * 4
        if miso_bits:
            nbytes = (miso_bits + 7) // 8
            data = (reply + b"\xff" * 4)[: min(4, nbytes)]
            word = int.from_bytes(data.ljust(4, b"\x00"), "little")
            if miso_bits < 32:
                word &= (1 << miso_bits) - 1
            self._regs[SPI_W0] = word


def valid_boot_image(flash: SpiFlash, offset: int = 0x1000) -> tuple[bool, str]:
    """What the ESP32 ROM checks before running the image at 0x1000: magic, segments, checksum.

    Returns (ok, reason) where reason is the ROM's console message when not ok.
    """
    header = flash.read(offset, 24)
    if header[0] != 0xE9:
        word = int.from_bytes(header[:4], "little")
        if header[:4] == b"\xff\xff\xff\xff":
            return False, f"flash read err, {offset:x}"
        return False, f"invalid header: 0x{word:08x}"
    nseg = header[1]
    if not 1 <= nseg <= 16:
        return False, f"invalid segment count: {nseg}"
    pos = offset + 24
    checksum = 0xEF
    for _ in range(nseg):
        if not flash.contains(pos, 8):
            return False, "segment header beyond end of flash"
        _load, length = struct.unpack("<II", flash.read(pos, 8))
        pos += 8
        if not flash.contains(pos, length):
            return False, f"segment length 0x{length:x} beyond end of flash"
        for b in flash.read(pos, length):
            checksum ^= b
        pos += length
    pos += 15 - (pos - offset) % 16  # checksum byte ends the 16-byte aligned image
    stored = flash.read(pos, 1)[0]
    if stored != checksum:
        return False, f"csum err:0x{stored:02x}!=0x{checksum:02x}"
    return True, "ok"


def wipe_fs(fs_dir: Path) -> None:
    """Erasing the vfs partition destroys the filesystem: remove its mirror directory."""
    if not fs_dir.exists():
        return
    for root, dirs, files in os.walk(fs_dir, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(fs_dir)
