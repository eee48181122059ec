"""Build a small ESP32 application image in the real esp-idf image format, for tests and CI.

It is not MicroPython (that binary is ~1.6 MB and cannot be downloaded here): it is a valid
image as the ESP32 ROM and `esptool image-info` check it (magic 0xE9, 24-byte header,
segments, XOR checksum, appended SHA-256), which is all the emulated board looks at before
it "boots" its MicroPython. Usage: python firmware/tools/make_test_image.py OUT [--size N]
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
from pathlib import Path

ESP_IMAGE_MAGIC = 0xE9
CHECKSUM_SEED = 0xEF
FLASH_MODE_DIO = 2
FLASH_4MB_40M = 0x20
WP_PIN_DISABLED = 0xEE
ESP32_CHIP_ID = 0
MAX_REV_FULL = 399  # esp-idf default for ESP32: accept every revision up to v3.99


def build_image(payload: bytes, entry: int = 0x40080400) -> bytes:
    """Return an ESP32 image with one IRAM segment holding `payload` (padded to 4 bytes)."""
    data = payload + b"\x00" * (-len(payload) % 4)
    header = struct.pack("<BBBBI", ESP_IMAGE_MAGIC, 1, FLASH_MODE_DIO, FLASH_4MB_40M, entry)
    extended = struct.pack(
        "<BBBBHBHH" + "B" * 4 + "B",
        WP_PIN_DISABLED, 0, 0, 0, ESP32_CHIP_ID, 0, 0, MAX_REV_FULL, 0, 0, 0, 0, 1,
    )
    body = header + extended + struct.pack("<II", 0x40080000, len(data)) + data
    checksum = CHECKSUM_SEED
    for b in data:
        checksum ^= b
    body += b"\x00" * (15 - len(body) % 16) + bytes([checksum])
    return body + hashlib.sha256(body).digest()


def payload(size: int, seed: str, random: bool = False) -> bytes:
    """Deterministic payload: text lines (compresses like code does) or a hash chain."""
    chunks: list[bytes] = []
    state = seed.encode()
    n = 0
    while n < size:
        if random:
            state = hashlib.sha256(state).digest()
            chunk = state
        else:
            chunk = f"{seed} test image line {len(chunks)}\n".encode()
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)[:size]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=64 * 1024, help="payload bytes (default 65536)")
    p.add_argument("--seed", default="edgewire", help="text that makes the payload unique")
    p.add_argument("--random", action="store_true", help="incompressible payload (hash chain)")
    args = p.parse_args(argv)
    image = build_image(payload(args.size, args.seed, args.random))
    args.out.write_bytes(image)
    print(f"{args.out}: {len(image)} bytes, sha256 {hashlib.sha256(image).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
