"""MQTT 3.1.1 packets the bench needs (QoS 0 subset): CONNECT, PUBLISH, SUBSCRIBE, PINGREQ, DISCONNECT.

The load generator sends them in WebSocket binary frames (subprotocol ``mqtt``) so Mosquitto
receives the same payload bytes from the same number of publishers as the gateway does.
tests/bench/test_mqtt.py checks the bytes against the MQTT 3.1.1 specification and against
an independent implementation (paho-mqtt) through a real Mosquitto.
"""

from __future__ import annotations

import struct

from bench.errors import LoadgenError

__all__ = ["CONNACK", "CONNECT", "DISCONNECT", "PINGREQ", "PINGRESP", "PUBLISH", "SUBACK", "SUBSCRIBE",
           "StreamParser", "connect", "disconnect", "parse_publish", "pingreq", "publish", "remaining_length",
           "subscribe"]

CONNECT, CONNACK, PUBLISH, SUBSCRIBE, SUBACK = 1, 2, 3, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
MAX_REMAINING = 268435455  # 4 bytes of 7 bits (MQTT 3.1.1 section 2.2.3)


def remaining_length(n: int) -> bytes:
    """MQTT variable-length integer (1-4 bytes, 7 bits each, continuation bit 0x80)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"MQTT remaining length must be 0..{MAX_REMAINING}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + remaining_length(len(body)) + body


def connect(client_id: str, keepalive: int = 60, clean: bool = True) -> bytes:
    """CONNECT packet, protocol level 4 (3.1.1), no will, no credentials."""
    body = _string("MQTT") + bytes((4, 0x02 if clean else 0)) + struct.pack("!H", keepalive) + _string(client_id)
    return _packet(CONNECT << 4, body)


def publish(topic: str | bytes, payload: bytes) -> bytes:
    """PUBLISH packet at QoS 0 (no packet id)."""
    return _packet(PUBLISH << 4, _string(topic) + payload)


def subscribe(packet_id: int, topic: str, qos: int = 0) -> bytes:
    """SUBSCRIBE packet with one topic filter (the fixed-header flags 0b0010 are mandatory)."""
    return _packet((SUBSCRIBE << 4) | 0x02, struct.pack("!H", packet_id) + _string(topic) + bytes((qos,)))


def pingreq() -> bytes:
    return bytes((PINGREQ << 4, 0))


def disconnect() -> bytes:
    return bytes((DISCONNECT << 4, 0))


class StreamParser:
    """Splits an MQTT byte stream (WebSocket binary payloads, any boundaries) into packets.

    ``feed`` returns (packet type, flags, body) tuples; a malformed length raises LoadgenError.
    """

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, int, bytes]]:
        buf = self.buf
        buf += data
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            n = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= end:
                    n = -1
                    break
                byte = buf[i]
                n |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise LoadgenError("malformed MQTT remaining length: more than 4 bytes")
            if n < 0 or end - i < n:
                break
            out.append((buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[i:i + n])))
            pos = i + n
        if pos:
            del buf[:pos]
        return out


def parse_publish(flags: int, body: bytes) -> tuple[str, bytes]:
    """(topic, payload) of a PUBLISH body; skips the packet id at QoS 1/2."""
    n = struct.unpack_from("!H", body)[0]
    topic = body[2:2 + n].decode()
    pos = 2 + n
    if (flags >> 1) & 0x03:
        pos += 2
    return topic, body[pos:]
