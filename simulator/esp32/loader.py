"""ESP32 serial download protocol: the ROM loader and, once uploaded, esptool's flasher stub.

Packets (already SLIP-decoded) are requests `<BBHI` (0x00, op, len, checksum) + data; responses
are `<BBHI` (0x01, op, len, value) + data + status. The ROM loader answers with 4 status bytes
(status, error, 0, 0), the stub with 2 (status, error). Data commands carry the ESP checksum
(XOR of the payload bytes seeded with 0xEF); a wrong checksum is refused, as on the chip.

The board cannot execute Xtensa code: a program uploaded with MEM_BEGIN/MEM_DATA and started
with MEM_END(entry) is taken to be esptool's flasher stub, which then answers "OHAI" and serves
the stub command set (ERASE_FLASH, ERASE_REGION, READ_FLASH, compressed writes, ...).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field

from simulator.esp32.chip import SECTOR, Chip

# Commands (esptool ESPLoader.ESP_CMDS)
FLASH_BEGIN = 0x02
FLASH_DATA = 0x03
FLASH_END = 0x04
MEM_BEGIN = 0x05
MEM_END = 0x06
MEM_DATA = 0x07
SYNC = 0x08
WRITE_REG = 0x09
READ_REG = 0x0A
SPI_SET_PARAMS = 0x0B
SPI_ATTACH = 0x0D
READ_FLASH_SLOW = 0x0E
CHANGE_BAUDRATE = 0x0F
FLASH_DEFL_BEGIN = 0x10
FLASH_DEFL_DATA = 0x11
FLASH_DEFL_END = 0x12
SPI_FLASH_MD5 = 0x13
GET_SECURITY_INFO = 0x14
ERASE_FLASH = 0xD0
ERASE_REGION = 0xD1
READ_FLASH = 0xD2
RUN_USER_CODE = 0xD3

# ROM loader error codes (second status byte)
ROM_INVALID_MESSAGE = 0x05
ROM_FAILED_TO_ACT = 0x06
ROM_INVALID_CRC = 0x07
ROM_FLASH_WRITE_ERR = 0x08
ROM_DEFLATE_ERR = 0x0B
# Stub error codes
STUB_BAD_DATA_LEN = 0xC0
STUB_BAD_DATA_CHECKSUM = 0xC1
STUB_INVALID_COMMAND = 0xC3
STUB_NOT_IN_FLASH_MODE = 0xC6
STUB_INFLATE_ERROR = 0xC7
STUB_TOO_MUCH_DATA = 0xC9
STUB_CMD_NOT_IMPLEMENTED = 0xFF

ROM_SYNC_VALUE = 0x20120707
CHECKSUM_SEED = 0xEF
DATA_COMMANDS = (FLASH_DATA, MEM_DATA, FLASH_DEFL_DATA)


def esp_checksum(data: bytes) -> int:
    state = CHECKSUM_SEED
    for b in data:
        state ^= b
    return state


class CommandError(Exception):
    """A request the loader refuses; `code` becomes the error status byte."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error 0x{code:02x}")
        self.code = code


@dataclass
class _FlashWrite:
    offset: int
    size: int  # bytes to write (stub) or region erased up front (ROM)
    blocks: int
    block_size: int
    compressed: bool
    next_write: int = 0
    erased_to: int = 0
    inflater: zlib._Decompress | None = None
    written: int = 0


@dataclass
class _FlashRead:
    offset: int
    length: int
    block: int
    in_flight: int
    sent: int = 0
    acked: int = 0
    done: bool = False
    md5: hashlib._Hash = field(default_factory=hashlib.md5)


class LoaderSession:
    """One download-mode session of the chip; feed packets, send back what `handle` returns.

    After a reboot request (FLASH_END/FLASH_DEFL_END with reboot, RUN_USER_CODE) `rebooted`
    is True: the chip leaves download mode and runs the application in flash.
    """

    def __init__(self, chip: Chip) -> None:
        self.chip = chip
        self.stub = False
        self.synced = False
        self.rebooted = False
        self._write: _FlashWrite | None = None
        self._read: _FlashRead | None = None
        self._mem_expected = 0
        self.log: list[str] = []

    # ---- framing -------------------------------------------------------------------------

    def _response(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> bytes:
        status = bytes([1 if error else 0, error])
        if not self.stub:
            status += b"\x00\x00"
        payload = data + status
        return struct.pack("<BBHI", 1, op, len(payload), value) + payload

    def handle(self, packet: bytes) -> list[bytes]:
        """Process one request packet; return the response packets (unframed)."""
        if self.rebooted:
            return []
        if self._read is not None and not self._read.done:
            return self._read_flash_ack(packet)
        if len(packet) < 8 or packet[0] != 0x00:
            return []  # not a request: the ROM ignores it
        _direction, op, length, checksum = struct.unpack("<BBHI", packet[:8])
        data = packet[8:]
        if length != len(data):
            return [self._response(op, error=self._err(ROM_INVALID_MESSAGE, STUB_BAD_DATA_LEN))]
        if op == SYNC:
            return self._sync(data)
        if not self.synced:
            return []  # the ROM answers nothing before it has auto-detected the baud rate
        try:
            if op in DATA_COMMANDS:
                self._check_data(data, checksum)
            return self._dispatch(op, data)
        except CommandError as exc:
            if op != GET_SECURITY_INFO:  # esptool probes it on every connect; the ESP32 ROM lacks it
                self.log.append(f"op 0x{op:02x} refused: 0x{exc.code:02x}")
            return [self._response(op, error=exc.code)]
        except (struct.error, IndexError):
            return [self._response(op, error=self._err(ROM_INVALID_MESSAGE, STUB_BAD_DATA_LEN))]

    def _err(self, rom_code: int, stub_code: int) -> int:
        return stub_code if self.stub else rom_code

    def _check_data(self, data: bytes, checksum: int) -> None:
        if len(data) < 16:
            raise CommandError(self._err(ROM_INVALID_MESSAGE, STUB_BAD_DATA_LEN))
        size = struct.unpack("<I", data[:4])[0]
        if size != len(data) - 16:
            raise CommandError(self._err(ROM_INVALID_MESSAGE, STUB_BAD_DATA_LEN))
        if esp_checksum(data[16:]) != checksum & 0xFF:
            raise CommandError(self._err(ROM_INVALID_CRC, STUB_BAD_DATA_CHECKSUM))

    def _sync(self, data: bytes) -> list[bytes]:
        if data != b"\x07\x07\x12\x20" + 32 * b"\x55":
            return []
        self.synced = True
        if self.stub:
            return [self._response(SYNC, 0)]
        # The ROM answers a SYNC several times (esptool reads 1 + 7 replies).
        return [self._response(SYNC, ROM_SYNC_VALUE) for _ in range(8)]

    # ---- commands ------------------------------------------------------------------------

    def _dispatch(self, op: int, data: bytes) -> list[bytes]:
        chip = self.chip
        flash = chip.flash
        if op == READ_REG:
            (addr,) = struct.unpack("<I", data[:4])
            return [self._response(op, chip.read_reg(addr))]
        if op == WRITE_REG:
            if len(data) % 16:
                raise CommandError(self._err(ROM_INVALID_MESSAGE, STUB_BAD_DATA_LEN))
            for i in range(0, len(data), 16):
                addr, value, mask, _delay = struct.unpack("<IIII", data[i : i + 16])
                chip.write_reg(addr, value, mask)
            return [self._response(op)]
        if op in (SPI_SET_PARAMS, SPI_ATTACH):
            return [self._response(op)]
        if op == CHANGE_BAUDRATE:
            baud = struct.unpack("<I", data[:4])[0]
            chip.set_baud(baud)
            return [self._response(op)]
        if op == GET_SECURITY_INFO:
            raise CommandError(self._err(ROM_INVALID_MESSAGE, STUB_INVALID_COMMAND))
        if op == MEM_BEGIN:
            size, _blocks, _block_size, _offset = struct.unpack("<IIII", data[:16])
            self._mem_expected = size
            return [self._response(op)]
        if op == MEM_DATA:
            return [self._response(op)]
        if op == MEM_END:
            no_entry, entry = struct.unpack("<II", data[:8])
            replies = [self._response(op)]
            if not no_entry and entry and not self.stub:
                self.stub = True
                self.log.append(f"flasher stub started at 0x{entry:08x}")
                replies.append(b"OHAI")
            return replies
        if op in (FLASH_BEGIN, FLASH_DEFL_BEGIN):
            return self._flash_begin(op, data)
        if op in (FLASH_DATA, FLASH_DEFL_DATA):
            return self._flash_data(op, data)
        if op in (FLASH_END, FLASH_DEFL_END):
            (stay,) = struct.unpack("<I", data[:4])
            self._write = None
            replies = [self._response(op)]
            if not stay:
                self.rebooted = True
            return replies
        if op == SPI_FLASH_MD5:
            addr, size = struct.unpack("<II", data[:8])
            if not flash.contains(addr, size):
                raise CommandError(self._err(ROM_FAILED_TO_ACT, STUB_BAD_DATA_LEN))
            digest = flash.md5(addr, size)
            body = digest if self.stub else digest.hex().encode()
            return [self._response(op, data=body)]
        if op == READ_FLASH_SLOW and not self.stub:
            addr, size = struct.unpack("<II", data[:8])
            if size > 64 or not flash.contains(addr, size):
                raise CommandError(ROM_FAILED_TO_ACT)
            return [self._response(op, data=flash.read(addr, size).ljust(64, b"\xff"))]
        if self.stub:
            return self._stub_only(op, data)
        raise CommandError(ROM_INVALID_MESSAGE)

    def _stub_only(self, op: int, data: bytes) -> list[bytes]:
        flash = self.chip.flash
        if op == ERASE_FLASH:
            flash.erase_all()
            return [self._response(op)]
        if op == ERASE_REGION:
            offset, size = struct.unpack("<II", data[:8])
            if offset % SECTOR or size % SECTOR or not flash.contains(offset, size):
                raise CommandError(STUB_BAD_DATA_LEN)
            flash.erase(offset, size)
            return [self._response(op)]
        if op == READ_FLASH:
            offset, length, block, in_flight = struct.unpack("<IIII", data[:16])
            if not flash.contains(offset, length) or block == 0:
                raise CommandError(STUB_BAD_DATA_LEN)
            self._read = _FlashRead(offset, length, block, max(1, in_flight))
            return [self._response(op), *self._read_flash_send()]
        if op == RUN_USER_CODE:
            self.rebooted = True
            return []
        raise CommandError(STUB_CMD_NOT_IMPLEMENTED)

    def _flash_begin(self, op: int, data: bytes) -> list[bytes]:
        size, blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        compressed = op == FLASH_DEFL_BEGIN
        flash = self.chip.flash
        if not flash.contains(offset, size):
            raise CommandError(self._err(ROM_FAILED_TO_ACT, STUB_TOO_MUCH_DATA))
        if not self.stub and offset % SECTOR:
            raise CommandError(ROM_FAILED_TO_ACT)  # the ROM can only write sector-aligned
        write = _FlashWrite(offset, size, blocks, block_size, compressed, next_write=offset)
        write.erased_to = offset
        if compressed:
            write.inflater = zlib.decompressobj()
        if not self.stub:
            flash.erase(offset, size)  # the ROM erases the whole region up front
            write.erased_to = offset + size
        self._write = write
        return [self._response(op)]

    def _flash_data(self, op: int, data: bytes) -> list[bytes]:
        write = self._write
        if write is None or write.compressed != (op == FLASH_DEFL_DATA):
            raise CommandError(self._err(ROM_FAILED_TO_ACT, STUB_NOT_IN_FLASH_MODE))
        _size, seq, _, _ = struct.unpack("<IIII", data[:16])
        payload = data[16:]
        if write.compressed:
            assert write.inflater is not None
            try:
                plain = write.inflater.decompress(payload)
            except zlib.error as exc:
                raise CommandError(self._err(ROM_DEFLATE_ERR, STUB_INFLATE_ERROR)) from exc
            address = write.next_write
        else:
            plain = payload
            if not self.stub and len(payload) != write.block_size:
                raise CommandError(ROM_INVALID_MESSAGE)
            address = write.offset + seq * write.block_size if not self.stub else write.next_write
        # uncompressed blocks are padded with 0xFF to the block size; inflated data is exact
        limit = write.offset + (write.size if write.compressed else write.blocks * write.block_size)
        if address + len(plain) > limit:
            raise CommandError(self._err(ROM_FLASH_WRITE_ERR, STUB_TOO_MUCH_DATA))
        flash = self.chip.flash
        if not flash.contains(address, len(plain)):
            raise CommandError(self._err(ROM_FLASH_WRITE_ERR, STUB_TOO_MUCH_DATA))
        if self.stub and address + len(plain) > write.erased_to:
            # the stub erases sector by sector just ahead of the data it writes
            end = -(-(address + len(plain)) // SECTOR) * SECTOR
            flash.erase(write.erased_to, end - write.erased_to)
            write.erased_to = end
        flash.program(address, plain)
        write.next_write = address + len(plain)
        write.written += len(plain)
        return [self._response(op)]

    def _read_flash_send(self) -> list[bytes]:
        rd = self._read
        assert rd is not None
        out: list[bytes] = []
        while rd.sent < rd.length and rd.sent - rd.acked < rd.block * rd.in_flight:
            n = min(rd.block, rd.length - rd.sent)
            chunk = self.chip.flash.read(rd.offset + rd.sent, n)
            rd.md5.update(chunk)
            rd.sent += n
            out.append(chunk)
        return out

    def _read_flash_ack(self, packet: bytes) -> list[bytes]:
        rd = self._read
        assert rd is not None
        if len(packet) != 4:
            return []
        rd.acked = struct.unpack("<I", packet)[0]
        out = self._read_flash_send()
        if rd.acked >= rd.length:
            rd.done = True
            self._read = None
            out.append(rd.md5.digest())
        return out
