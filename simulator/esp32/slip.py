"""SLIP framing (RFC 1055) as used by the ESP32 serial bootloader: 0xC0 ends, 0xDB escapes."""

from __future__ import annotations

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD


def encode(payload: bytes) -> bytes:
    """Frame one packet: C0 + escaped payload + C0."""
    body = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class Decoder:
    """Incremental SLIP decoder; bytes outside a frame are noise and are counted, not kept."""

    def __init__(self) -> None:
        self._buf: bytearray | None = None
        self._escape = False
        self.noise = 0
        self.bad_escapes = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Consume raw bytes; return the complete packets they finish (possibly none)."""
        packets: list[bytes] = []
        for b in data:
            if self._buf is None:
                if b == END:
                    self._buf = bytearray()
                else:
                    self.noise += 1
                continue
            if self._escape:
                self._escape = False
                if b == ESC_END:
                    self._buf.append(END)
                elif b == ESC_ESC:
                    self._buf.append(ESC)
                else:
                    self.bad_escapes += 1
                    self._buf = None
                continue
            if b == ESC:
                self._escape = True
            elif b == END:
                if self._buf:
                    packets.append(bytes(self._buf))
                    self._buf = None
                # an empty frame (C0 C0) is a frame boundary: stay inside a frame
            else:
                self._buf.append(b)
        return packets
