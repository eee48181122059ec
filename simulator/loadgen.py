"""Load generator: thousands of simulated devices from one process (or a few workers).

The devices speak protocol v1 through ``protocol.device.DeviceSession`` (auth frame, data
frames, cumulative acks, slow-down) over a minimal asyncio WebSocket client written for
this purpose: one ``asyncio.Protocol`` per connection, no task per connection, frames
encoded and parsed inline. The server side stays the real gateway (websockets); only the
generator is lean, so its own CPU stays well below the server's.

The same client carries MQTT 3.1.1 (CONNECT / PUBLISH QoS 0 / SUBSCRIBE) in binary
frames with subprotocol ``mqtt``, so Mosquitto receives the same payload bytes from the
same number of publishers in the comparison run (bench/run.py).

Two watchers measure delivery: ``DashboardWatcher`` reads the gateway's /v1/dashboard
stream and ``MqttSubscriber`` subscribes to the publishers' topics. Each reading carries
its send time in ``ts`` (Unix ms), so latency = receive time - ts per delivered update.

Every loop here is bounded in count and time; traffic goes to 127.0.0.x only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from protocol import wire
from protocol.device import DEV_ACK, DEV_CMD, DEV_ERROR, DEV_SLOW, DEV_WELCOME, DeviceSession

try:  # C helper shipped with websockets; pure-Python fallback below
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    _c_apply_mask = None  # type: ignore[assignment]

try:
    import orjson

    def _dumps(msg: Any) -> str:
        return orjson.dumps(msg).decode()

    _loads: Callable[[str | bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is a gateway dependency, normally present
    def _dumps(msg: Any) -> str:
        return json.dumps(msg, separators=(",", ":"))

    _loads = json.loads

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
LOOPBACK_PREFIX = "127."


class LoadgenError(RuntimeError):
    """The load generator could not do what it was asked; the message says what to check."""


def now_ms() -> int:
    return int(time.time() * 1000)


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def process_cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    return cpu_seconds_from_stat(text)


def cpu_seconds_from_stat(text: str) -> float:
    """Parse utime+stime (fields 14 and 15) from a /proc/PID/stat line.

    The command name (field 2) is in parentheses and may contain spaces or ')', so
    fields are counted from the LAST ')'.
    """
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14 -> rest[11], stime field 15 -> rest[12]
    ticks = int(rest[11]) + int(rest[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- WebSocket framing (RFC 6455)

def apply_mask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    if _c_apply_mask is not None:
        return bytes(_c_apply_mask(payload, mask))
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, mask: bytes | None, fin: bool = True) -> bytes:
    """One WebSocket frame. Clients must mask (``mask`` = 4 bytes); servers must not (None)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


class FrameParser:
    """Incremental frame decoder: ``feed(bytes)`` returns complete messages as (opcode, payload).

    Fragmented data messages are reassembled; control frames are returned as they come.
    A message larger than ``max_size`` raises LoadgenError (the peer broke the limit).
    """

    __slots__ = ("buf", "frag_op", "frags", "max_size")

    def __init__(self, max_size: int = 1 << 24) -> None:
        self.buf = bytearray()
        self.frag_op = -1
        self.frags: list[bytes] = []
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if n > self.max_size:
                raise LoadgenError(f"frame of {n} bytes exceeds the {self.max_size}-byte limit")
            masked = b1 & 0x80
            if masked:
                head += 4
            if end - pos < head + n:
                break
            payload = bytes(buf[pos + head:pos + head + n])
            if masked:
                payload = apply_mask(payload, bytes(buf[pos + head - 4:pos + head]))
            pos += head + n
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= 0x8:
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                self.frags.append(payload)
                if fin:
                    out.append((self.frag_op, b"".join(self.frags)))
                    self.frags = []
                    self.frag_op = -1
            elif fin:
                out.append((opcode, payload))
            else:
                self.frag_op = opcode
                self.frags = [payload]
        if pos:
            del buf[:pos]
        return out


def handshake_request(host: str, port: int, path: str, key: str,
                      subprotocol: str | None = None, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The HTTP/1.1 upgrade request of a WebSocket client."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def parse_handshake_response(head: bytes) -> tuple[int, dict[str, str]]:
    """(status code, lower-cased headers) of an HTTP response head (without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise LoadgenError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class WsClient(asyncio.Protocol):
    """Minimal WebSocket client connection (RFC 6455, no extensions).

    Subclasses override ``on_open``, ``on_message(opcode, payload)`` and ``on_closed``.
    Pings are answered with pongs; a close frame is echoed.
    """

    __slots__ = ("_hbuf", "_key", "_mask", "_parser", "_request", "close_code", "closed", "error",
                 "open", "transport", "upgraded", "waiter")

    def __init__(self, request_factory: Callable[[str], bytes]) -> None:
        self._key = base64.b64encode(random.getrandbits(128).to_bytes(16, "big")).decode()
        self._request: bytes = request_factory(self._key)
        self._hbuf: bytearray | None = bytearray()
        self._parser = FrameParser()
        self._mask = random.getrandbits(32).to_bytes(4, "big")
        self.transport: asyncio.Transport | None = None
        self.open = False  # upgraded and no close frame yet: sending allowed
        self.upgraded = False  # the server answered 101 (stays True after a close)
        self.closed = False
        self.close_code = 0
        self.error = ""
        self.waiter: asyncio.Future[None] | None = None  # set only while someone waits for a state change

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._receive(data)
        if self.waiter is not None:
            self._wake()

    def _receive(self, data: bytes) -> None:
        if self._hbuf is not None:
            self._hbuf += data
            cut = self._hbuf.find(b"\r\n\r\n")
            if cut < 0:
                if len(self._hbuf) > 65536:
                    self._fail("handshake response too long")
                return
            head = bytes(self._hbuf[:cut])
            rest = bytes(self._hbuf[cut + 4:])
            self._hbuf = None
            try:
                status, headers = parse_handshake_response(head)
            except (LoadgenError, ValueError) as err:
                self._fail(str(err))
                return
            if status != 101:
                self._fail(f"HTTP {status}: {rest[:200].decode('utf-8', 'replace')}")
                return
            if headers.get("sec-websocket-accept") != accept_key(self._key):
                self._fail("bad Sec-WebSocket-Accept")
                return
            self.open = True
            self.upgraded = True
            self.on_open()
            if not rest:
                return
            data = rest
        try:
            messages = self._parser.feed(data)
        except LoadgenError as err:
            self._fail(str(err))
            return
        for opcode, payload in messages:
            if opcode == OP_PING:
                self._write(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.open:
                    self.open = False
                    self._write(OP_CLOSE, payload[:2])
            elif opcode != OP_PONG:
                self.on_message(opcode, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.closed:
            self.closed = True
            if exc is not None and not self.error:
                self.error = str(exc) or type(exc).__name__
            self.on_closed()
        self._wake()

    # -- sending
    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload, self._mask))
            # A new mask per frame (RFC 6455 wants it unpredictable): cheap xorshift of the last one.
            m = int.from_bytes(self._mask, "big")
            m ^= (m << 13) & 0xFFFFFFFF
            m ^= m >> 17
            m ^= (m << 5) & 0xFFFFFFFF
            self._mask = (m or 0x9E3779B9).to_bytes(4, "big")

    def send_text(self, text: str | bytes) -> bool:
        if not self.open:
            return False
        self._write(OP_TEXT, text.encode() if isinstance(text, str) else text)
        return True

    def send_binary(self, data: bytes) -> bool:
        if not self.open:
            return False
        self._write(OP_BINARY, data)
        return True

    def close(self, code: int = 1000) -> None:
        """Send a close frame (if open) and close the TCP connection."""
        if self.open:
            self.open = False
            self._write(OP_CLOSE, code.to_bytes(2, "big"))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, message: str) -> None:
        self.error = message
        self.open = False
        if self.transport is not None:
            self.transport.abort()

    # -- hooks
    def on_open(self) -> None:
        """Handshake completed."""

    def on_message(self, opcode: int, payload: bytes) -> None:
        """A complete text or binary message arrived."""

    def on_closed(self) -> None:
        """The TCP connection is gone."""


async def open_connection(factory: Callable[[], WsClient], host: str, port: int,
                          source: str | None = None, timeout: float = 30.0) -> WsClient:
    """Connect ``factory()`` to host:port (from source address ``source``) and wait for the upgrade.

    Raises LoadgenError (with the server's answer) when the upgrade fails.
    """
    if not host.startswith(LOOPBACK_PREFIX) and host != "localhost":
        raise LoadgenError(f"refusing to load {host}: the load generator only targets 127.0.0.x")
    loop = asyncio.get_running_loop()
    client: WsClient
    if source and source != "127.0.0.1":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Pick the source port at connect() time, so 4-tuples (not ports) must be unique.
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        except BaseException:
            sock.close()
            raise
        _, client = await loop.create_connection(factory, sock=sock)
    else:
        _, client = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout)
    if not await wait_until(client, lambda: client.upgraded, timeout):
        client.close()
        reason = client.error or "closed or timed out"
        raise LoadgenError(f"WebSocket upgrade to {host}:{port} failed: {reason}")
    return client


async def wait_until(client: WsClient, condition: Callable[[], bool], timeout: float) -> bool:
    """Wait (no polling) until ``condition()`` holds after some input; False on close or timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        remaining = deadline - loop.time()
        if client.closed or client.error or remaining <= 0:
            return False
        client.waiter = loop.create_future()
        try:
            await asyncio.wait_for(client.waiter, remaining)
        except TimeoutError:
            return False
        finally:
            client.waiter = None
    return True


# ---------------------------------------------------------------- MQTT 3.1.1 (QoS 0 subset)

MQTT_CONNECT, MQTT_CONNACK, MQTT_PUBLISH, MQTT_SUBSCRIBE, MQTT_SUBACK = 1, 2, 3, 8, 9
MQTT_PINGREQ, MQTT_PINGRESP, MQTT_DISCONNECT = 12, 13, 14


def mqtt_remaining_length(n: int) -> bytes:
    """MQTT variable-length integer (1-4 bytes, 7 bits each, continuation bit 0x80)."""
    if not 0 <= n <= 268435455:
        raise ValueError("MQTT remaining length must be 0..268435455")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _mqtt_str(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def mqtt_connect(client_id: str, keepalive: int = 60, clean: bool = True) -> bytes:
    """CONNECT packet, protocol level 4 (3.1.1), no will, no credentials."""
    body = (_mqtt_str("MQTT") + bytes((4, 0x02 if clean else 0)) + struct.pack("!H", keepalive)
            + _mqtt_str(client_id))
    return bytes((MQTT_CONNECT << 4,)) + mqtt_remaining_length(len(body)) + body


def mqtt_publish(topic: str | bytes, payload: bytes) -> bytes:
    """PUBLISH packet at QoS 0 (no packet id)."""
    body = _mqtt_str(topic) + payload
    return bytes((MQTT_PUBLISH << 4,)) + mqtt_remaining_length(len(body)) + body


def mqtt_subscribe(packet_id: int, topic: str, qos: int = 0) -> bytes:
    body = struct.pack("!H", packet_id) + _mqtt_str(topic) + bytes((qos,))
    return bytes(((MQTT_SUBSCRIBE << 4) | 0x02,)) + mqtt_remaining_length(len(body)) + body


def mqtt_pingreq() -> bytes:
    return bytes((MQTT_PINGREQ << 4, 0))


def mqtt_disconnect() -> bytes:
    return bytes((MQTT_DISCONNECT << 4, 0))


class MqttStreamParser:
    """Splits an MQTT byte stream (WebSocket binary payloads, any boundaries) into packets.

    ``feed`` returns (packet type, flags, body) tuples.
    """

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
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
                    raise LoadgenError("malformed MQTT remaining length")
            if n < 0 or end - i < n:
                break
            out.append((buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[i:i + n])))
            pos = i + n
        if pos:
            del buf[:pos]
        return out


def mqtt_parse_publish(flags: int, body: bytes) -> tuple[str, bytes]:
    """(topic, payload) of a PUBLISH body; skips the packet id at QoS 1/2."""
    n = struct.unpack_from("!H", body)[0]
    topic = body[2:2 + n].decode()
    pos = 2 + n
    if (flags >> 1) & 0x03:
        pos += 2
    return topic, body[pos:]


# ---------------------------------------------------------------- payloads

class Payloads:
    """Realistic readings (~100-byte data frames): small random walks per device."""

    def __init__(self, seed: int = 1) -> None:
        rnd = random.Random(seed)
        self.table = [
            {"temperature": round(rnd.uniform(18.0, 26.0), 2), "humidity": round(rnd.uniform(30.0, 60.0), 1),
             "battery": round(rnd.uniform(60.0, 100.0), 1)}
            for _ in range(257)]

    def metrics(self, index: int) -> dict[str, float]:
        return self.table[index % len(self.table)]


# ---------------------------------------------------------------- devices

# Per process: ms from each reading's creation to the ack that confirmed it (DeviceConn).
ACK_LATENCIES: array[float] = array("d")

class DeviceConn(WsClient):
    """One Edgewire device: protocol.device.DeviceSession over WsClient, readings kept until acked."""

    __slots__ = ("base_seq", "generated", "next_seq", "payloads", "pending", "rejected", "session", "slowed",
                 "welcomed")

    def __init__(self, request_factory: Callable[[str], bytes], device_id: str, token: str,
                 payloads: Payloads, window: int = 4, max_batch: int = 20) -> None:
        super().__init__(request_factory)
        self.session = DeviceSession(device_id, token=token, boot=f"{random.getrandbits(32):08x}",
                                          max_batch=max_batch, window=window, loads=_loads, dumps=_dumps)
        self.pending: list[Any] = []  # wire.Reading not yet acknowledged, seq order
        self.payloads = payloads
        self.welcomed = False
        self.base_seq = 0  # last_seq from the first welcome: readings above it are this run's
        self.next_seq = 1
        self.generated = 0
        self.rejected = 0
        self.slowed = 0

    def on_open(self) -> None:
        frame = self.session.auth_frame()
        if frame is not None:
            self.send_text(frame)

    def on_message(self, opcode: int, payload: bytes) -> None:
        if opcode != OP_TEXT:
            return
        try:
            kind, info = self.session.receive(payload.decode())
        except (wire.ProtocolError, UnicodeDecodeError):
            return
        if kind == DEV_ACK:
            pending = self.pending
            cut = 0
            stamp = time.time() * 1000.0
            samples = ACK_LATENCIES
            while cut < len(pending) and pending[cut].seq <= info:
                samples.append(stamp - pending[cut].ts)  # reading taken -> stored and acked
                cut += 1
            if cut:
                del pending[:cut]
            self.flush()
        elif kind == DEV_WELCOME:
            if not self.welcomed:
                self.welcomed = True
                self.base_seq = self.session.acked
                self.next_seq = self.base_seq + 1
            self.flush()
        elif kind == DEV_CMD:
            self.send_text(self.session.result_frame(info["id"], True, "ok"))
        elif kind == DEV_SLOW:
            self.slowed += 1
        elif kind == DEV_ERROR:
            self.rejected += 1

    def tick(self, ts: int, index: int) -> None:
        """Take one reading (timestamped ``ts``) and send what the window allows."""
        reading = wire.Reading(self.next_seq, self.payloads.metrics(index), ts, None, "ok")
        self.next_seq += 1
        self.generated += 1
        self.pending.append(reading)
        self.flush()

    def flush(self) -> None:
        session = self.session
        while self.open and session.can_send():
            frame = session.next_frame(self.pending)
            if frame is None:
                return
            self.send_text(frame)

    @property
    def acked(self) -> int:
        return max(0, self.session.acked - self.base_seq)

    @property
    def sent(self) -> int:
        return max(0, self.session.sent - self.base_seq)


class MqttPublisher(WsClient):
    """One MQTT publisher sending the same data-frame bytes as a device, QoS 0."""

    __slots__ = ("boot", "device_id", "generated", "next_seq", "payloads", "sent_count", "topic", "welcomed")

    def __init__(self, request_factory: Callable[[str], bytes], device_id: str, payloads: Payloads) -> None:
        super().__init__(request_factory)
        self.device_id = device_id
        self.topic = f"edgewire/{device_id}/data".encode()
        self.payloads = payloads
        self.boot = f"{random.getrandbits(32):08x}"
        self.welcomed = False
        self.next_seq = 1
        self.generated = 0
        self.sent_count = 0

    def on_open(self) -> None:
        self.send_binary(mqtt_connect(self.device_id, keepalive=120))

    def on_message(self, opcode: int, payload: bytes) -> None:
        # CONNACK: 0x20 0x02 flags rc (sent in its own frame by Mosquitto; parse defensively)
        if len(payload) >= 4 and payload[0] >> 4 == MQTT_CONNACK:
            if payload[3] == 0:
                self.welcomed = True
            else:
                self.error = f"CONNACK return code {payload[3]}"
                self.close()

    def tick(self, ts: int, index: int) -> None:
        reading = wire.Reading(self.next_seq, self.payloads.metrics(index), ts, None, "ok")
        data = _dumps(wire.data_message(self.next_seq, [reading], self.boot)).encode()
        self.next_seq += 1
        self.generated += 1
        if self.welcomed and self.send_binary(mqtt_publish(self.topic, data)):
            self.sent_count += 1

    def flush(self) -> None:
        """QoS 0 has nothing to resend."""

    @property
    def acked(self) -> int:
        return 0

    @property
    def sent(self) -> int:
        return self.sent_count


# ---------------------------------------------------------------- watchers (delivery and latency)

class DashboardWatcher(WsClient):
    """Dashboard-stream client: one latency sample per device update carrying a newer reading time.

    The hub coalesces per device (latest values only), so a device that sent twice within
    one interval yields one sample; ``delivered`` counts updates, not readings.
    """

    __slots__ = ("delivered", "last_time", "latencies", "recording", "snapshots", "updates")

    def __init__(self, request_factory: Callable[[str], bytes]) -> None:
        super().__init__(request_factory)
        self.last_time: dict[str, int] = {}
        self.latencies: array[float] = array("d")
        self.delivered = 0
        self.snapshots = 0
        self.updates = 0
        self.recording = True

    def on_message(self, opcode: int, payload: bytes) -> None:
        received = time.time() * 1000.0
        try:
            msg = _loads(payload)
        except ValueError:
            return
        kind = msg.get("t")
        if kind == "snapshot":
            self.snapshots += 1
            for view in msg.get("devices", []):
                self._see(view.get("id"), view, received, False)
        elif kind == "update":
            self.updates += 1
            for device_id, view in (msg.get("devices") or {}).items():
                self._see(device_id, view, received, self.recording)

    def _see(self, device_id: Any, view: dict[str, Any], received: float, record: bool) -> None:
        latest = view.get("latest") or {}
        newest = 0
        for pair in latest.values():
            if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], int) and pair[1] > newest:
                newest = pair[1]
        if not newest:
            return
        last = self.last_time.get(device_id, 0)
        if newest > last:
            self.last_time[device_id] = newest
            if record:
                self.delivered += 1
                self.latencies.append(received - newest)


class MqttSubscriber(WsClient):
    """MQTT subscriber to ``edgewire/+/data``: one latency sample per message received."""

    __slots__ = ("delivered", "latencies", "mqtt", "recording", "subscribed", "topic")

    def __init__(self, request_factory: Callable[[str], bytes], topic: str = "edgewire/+/data") -> None:
        super().__init__(request_factory)
        self.mqtt = MqttStreamParser()
        self.topic = topic
        self.subscribed = False
        self.delivered = 0
        self.latencies: array[float] = array("d")
        self.recording = True

    def on_open(self) -> None:
        self.send_binary(mqtt_connect(f"bench-sub-{os.getpid()}", keepalive=120))

    def on_message(self, opcode: int, payload: bytes) -> None:
        received = time.time() * 1000.0
        for ptype, flags, body in self.mqtt.feed(payload):
            if ptype == MQTT_PUBLISH:
                _, data = mqtt_parse_publish(flags, body)
                if not self.recording:
                    continue
                try:
                    msg = _loads(data)
                    for item in msg["r"]:
                        self.delivered += 1
                        self.latencies.append(received - item["ts"])
                except (ValueError, KeyError, TypeError):
                    continue
            elif ptype == MQTT_CONNACK:
                if len(body) >= 2 and body[1] == 0:
                    self.send_binary(mqtt_subscribe(1, self.topic, 0))
                else:
                    self.error = "CONNACK refused"
            elif ptype == MQTT_SUBACK:
                self.subscribed = True


# ---------------------------------------------------------------- worker processes

def _request_factory(host: str, port: int, path: str, subprotocol: str | None) -> Callable[[str], bytes]:
    def build(key: str) -> bytes:
        return handshake_request(host, port, path, key, subprotocol)
    return build


def parse_ws_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a ws:// URL on loopback."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise LoadgenError(f"{url}: only ws:// URLs are supported by the load generator")
    host = parts.hostname or ""
    if not host.startswith(LOOPBACK_PREFIX) and host != "localhost":
        raise LoadgenError(f"{url}: the load generator only targets 127.0.0.x")
    return host, parts.port or 80, parts.path or "/"


class Worker:
    """Holds a share of the devices in one process and drives them on command."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.kind: str = spec["kind"]  # "edgewire" or "mqtt"
        self.host, self.port, self.path = parse_ws_url(spec["url"])
        self.devices: list[tuple[str, str]] = [(str(d[0]), str(d[1])) for d in spec["devices"]]
        self.sources: list[str] = spec.get("sources") or ["127.0.0.1"]
        self.conns: list[DeviceConn | MqttPublisher] = []
        self.payloads = Payloads(spec.get("seed", 1))
        self.connect_failures = 0
        self.first_error = ""

    def _make(self, device_id: str, token: str) -> DeviceConn | MqttPublisher:
        if self.kind == "mqtt":
            return MqttPublisher(_request_factory(self.host, self.port, self.path, "mqtt"), device_id,
                                 self.payloads)
        return DeviceConn(_request_factory(self.host, self.port, self.path, None), device_id, token,
                          self.payloads, self.spec.get("window", 4), self.spec.get("max_batch", 20))

    async def connect(self, concurrency: int, timeout: float) -> dict[str, Any]:
        """Open every connection (at most ``concurrency`` handshakes at once) and wait for welcomes."""
        loop = asyncio.get_running_loop()
        started = time.time()
        deadline = loop.time() + timeout
        gate = asyncio.Semaphore(concurrency)
        conns: list[DeviceConn | MqttPublisher] = []

        async def one(index: int, device_id: str, token: str) -> None:
            async with gate:
                if loop.time() > deadline:
                    self.connect_failures += 1
                    return
                source = self.sources[index % len(self.sources)]
                try:
                    conn = await open_connection(lambda: self._make(device_id, token), self.host, self.port,
                                                 source, max(1.0, deadline - loop.time()))
                except (OSError, LoadgenError, TimeoutError) as err:
                    self.connect_failures += 1
                    self.first_error = self.first_error or f"{device_id}: {err}"
                    return
                assert isinstance(conn, DeviceConn | MqttPublisher)
                conns.append(conn)
                # hold the slot until welcomed / CONNACKed, so the storm is bounded end to end
                await wait_until(conn, lambda: conn.welcomed, max(0.1, deadline - loop.time()))

        await asyncio.gather(*(one(i, d, t) for i, (d, t) in enumerate(self.devices)))
        self.conns = conns
        welcomed = sum(1 for c in conns if c.welcomed and not c.closed)
        errors = [c.error for c in conns if c.error]
        if errors and not self.first_error:
            self.first_error = errors[0]
        return {"connected": welcomed, "failures": self.connect_failures + len(conns) - welcomed,
                "connect_s": time.time() - started, "first_error": self.first_error}

    async def run(self, start_at: float, hold_s: float, rate: float, drain_s: float) -> dict[str, Any]:
        """Send ``rate`` readings/s per device from wall time ``start_at`` for ``hold_s``; drain acks."""
        loop = asyncio.get_running_loop()
        conns = [c for c in self.conns if c.welcomed]
        n = len(conns)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        del ACK_LATENCIES[:]
        cpu0 = process_cpu_seconds()
        wall0 = time.time()
        t0 = loop.time()
        end = t0 + hold_s
        done = 0
        # Device i sends at t0 + (i + k*n) / (n*rate): evenly spread phases, bounded by hold_s.
        total = int(n * rate * hold_s)
        late_max = 0.0
        while done < total:
            now = loop.time()
            if now >= end + 1.0:
                break  # hopelessly behind (generator saturated); the CPU figure flags it
            target = min(total, int((now - t0) * n * rate) + 1)
            if target > done:
                ts = now_ms()
                late_max = max(late_max, now - (t0 + done / (n * rate)))
                while done < target:
                    conns[done % n].tick(ts, done)
                    done += 1
            await asyncio.sleep(0.005)
        cpu1 = process_cpu_seconds()
        wall1 = time.time()
        # drain: wait (bounded) for every reading to be acknowledged
        drain_end = loop.time() + drain_s
        if self.kind == "edgewire":
            while loop.time() < drain_end:
                if all(c.acked >= c.generated or c.closed for c in conns):
                    break
                await asyncio.sleep(0.05)
        generated = sum(c.generated for c in conns)
        sent = sum(min(c.sent, c.generated) for c in conns)
        return {
            "devices": n, "generated": generated, "sent": sent,
            "acked": sum(min(c.acked, c.generated) for c in conns) if self.kind == "edgewire" else 0,
            "rejected": sum(getattr(c, "rejected", 0) for c in conns),
            "slowed": sum(getattr(c, "slowed", 0) for c in conns),
            "closed_during_run": sum(1 for c in conns if c.closed),
            "close_codes": sorted({c.close_code for c in conns if c.closed}),
            "cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0, "late_max_s": late_max,
            "drain_s": drain_s - max(0.0, drain_end - loop.time()),
            "rss_kib": rss_kib("self"),
            "ack_latencies": array("d", ACK_LATENCIES),
        }

    async def close_all(self) -> None:
        for conn in self.conns:
            if isinstance(conn, MqttPublisher) and conn.open:
                conn.send_binary(mqtt_disconnect())
            conn.close()
        await asyncio.sleep(0.2)
        self.conns = []


def rss_kib(pid: int | str) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process in KiB from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as handle:
        return parse_status_memory(handle.read())


def parse_status_memory(text: str) -> dict[str, int]:
    """{"rss": VmRSS, "hwm": VmHWM} in KiB from /proc/PID/status text (0 when absent)."""
    out = {"rss": 0, "hwm": 0}
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            out["hwm"] = int(line.split()[1])
    return out


def _install_loop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def worker_main(conn: multiprocessing.connection.Connection, spec: dict[str, Any]) -> None:
    """Entry point of one worker process: answers commands from the pipe until "exit"."""
    raise_nofile_limit()
    _install_loop()
    asyncio.run(_worker_loop(conn, spec))


async def _worker_loop(pipe: multiprocessing.connection.Connection, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(pipe.recv())
        except (EOFError, OSError):
            inbox.put_nowait({"cmd": "exit"})
            loop.remove_reader(pipe.fileno())

    loop.add_reader(pipe.fileno(), readable)
    # The loop made the pipe non-blocking; replies (latency arrays of MBs) need blocking writes.
    os.set_blocking(pipe.fileno(), True)
    worker: Worker | DashboardWatcher | MqttSubscriber | None = None
    watcher: DashboardWatcher | MqttSubscriber | None = None
    while True:
        msg = await inbox.get()
        cmd = msg["cmd"]
        try:
            if cmd == "connect" and spec["kind"] in ("edgewire", "mqtt"):
                worker = Worker(spec)
                reply: dict[str, Any] = await worker.connect(msg["concurrency"], msg["timeout"])
            elif cmd == "run" and isinstance(worker, Worker):
                reply = await worker.run(msg["start_at"], msg["hold_s"], msg["rate"], msg["drain_s"])
            elif cmd == "close" and isinstance(worker, Worker):
                await worker.close_all()
                reply = {"closed": True}
            elif cmd == "watch":
                watcher = await _open_watcher(spec)
                reply = {"ready": True}
            elif cmd == "watch_mark" and watcher is not None:
                watcher.recording = bool(msg["recording"])
                watcher.delivered = 0
                watcher.latencies = array("d")
                reply = {"cpu_s": process_cpu_seconds(), "time": time.time()}
            elif cmd == "watch_stats" and watcher is not None:
                reply = {"delivered": watcher.delivered, "latencies": watcher.latencies,
                         "cpu_s": process_cpu_seconds(), "time": time.time(), "open": watcher.open,
                         "resyncs": getattr(watcher, "snapshots", 1) - 1}
            elif cmd == "exit":
                if watcher is not None:
                    watcher.close()
                if isinstance(worker, Worker):
                    await worker.close_all()
                pipe.send({"bye": True})
                return
            else:
                reply = {"error": f"unexpected command {cmd!r}"}
        except Exception as err:  # reported to the orchestrator, which fails the step loudly
            reply = {"error": f"{type(err).__name__}: {err}"}
        pipe.send(reply)


async def _open_watcher(spec: dict[str, Any]) -> DashboardWatcher | MqttSubscriber:
    host, port, path = parse_ws_url(spec["url"])
    if spec["kind"] == "dashboard":
        factory = _request_factory(host, port, path, None)
        dash = await open_connection(lambda: DashboardWatcher(factory), host, port)
        assert isinstance(dash, DashboardWatcher)
        if not await wait_until(dash, lambda: dash.snapshots > 0, 10):
            raise LoadgenError("dashboard stream sent no snapshot within 10 s")
        return dash
    mqtt_factory = _request_factory(host, port, path, "mqtt")
    sub = await open_connection(lambda: MqttSubscriber(mqtt_factory), host, port)
    assert isinstance(sub, MqttSubscriber)
    if not await wait_until(sub, lambda: sub.subscribed, 10):
        raise LoadgenError(f"MQTT subscription not acknowledged within 10 s ({sub.error or 'no SUBACK'})")
    return sub


class Proc:
    """A worker or watcher process and its command pipe."""

    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, spec), daemon=True)
        self.process.start()
        child.close()

    def send(self, msg: dict[str, Any]) -> None:
        self.pipe.send(msg)

    def recv(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.pipe.poll(0.5):
            if not self.process.is_alive():
                raise LoadgenError(f"worker pid {self.process.pid} died (exit code {self.process.exitcode})")
            if time.monotonic() > deadline:
                raise LoadgenError(f"worker pid {self.process.pid} did not answer within {timeout:g} s")
        reply: dict[str, Any] = self.pipe.recv()
        if "error" in reply:
            raise LoadgenError(f"worker pid {self.process.pid}: {reply['error']}")
        return reply

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(msg)
        return self.recv(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call({"cmd": "exit"}, 10)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.pipe.close()


class LoadGen:
    """N worker processes each holding a share of ``devices`` [(device_id, token)]."""

    def __init__(self, kind: str, url: str, devices: Sequence[tuple[str, str]], workers: int = 1,
                 sources: int = 1, window: int = 4, max_batch: int = 20) -> None:
        if kind not in ("edgewire", "mqtt"):
            raise LoadgenError(f"kind {kind!r} must be 'edgewire' or 'mqtt'")
        workers = max(1, min(workers, len(devices) or 1))
        addrs = [f"127.0.0.{i + 1}" for i in range(max(1, sources))]
        self.procs = [Proc({"kind": kind, "url": url, "devices": list(devices[i::workers]), "sources": addrs,
                            "window": window, "max_batch": max_batch, "seed": i + 1})
                      for i in range(workers)]

    def connect(self, concurrency: int = 256, timeout: float = 120.0) -> dict[str, Any]:
        share = max(1, concurrency // len(self.procs))
        for proc in self.procs:
            proc.send({"cmd": "connect", "concurrency": share, "timeout": timeout})
        replies = [proc.recv(timeout + 30) for proc in self.procs]
        return {"connected": sum(r["connected"] for r in replies),
                "failures": sum(r["failures"] for r in replies),
                "connect_s": max(r["connect_s"] for r in replies),
                "first_error": next((r["first_error"] for r in replies if r["first_error"]), "")}

    def start(self, start_at: float, hold_s: float, rate: float, drain_s: float) -> None:
        for proc in self.procs:
            proc.send({"cmd": "run", "start_at": start_at, "hold_s": hold_s, "rate": rate,
                       "drain_s": drain_s})

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return [proc.recv(timeout) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(LoadgenError):
                proc.call({"cmd": "close"}, 30)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


class Watcher:
    """A dashboard-stream client ("dashboard") or MQTT subscriber ("subscriber") in its own process."""

    def __init__(self, kind: str, url: str) -> None:
        self.proc = Proc({"kind": "dashboard" if kind == "dashboard" else "subscriber", "url": url})
        self.proc.call({"cmd": "watch"}, 30)

    def mark(self) -> dict[str, Any]:
        """Reset counters and start recording now."""
        return self.proc.call({"cmd": "watch_mark", "recording": True}, 10)

    def stats(self) -> dict[str, Any]:
        return self.proc.call({"cmd": "watch_stats"}, 30)

    @property
    def pid(self) -> int:
        return int(self.proc.process.pid or 0)

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------- command line

def read_device_file(path: str) -> list[tuple[str, str]]:
    """Devices from a file of ``device_id,token`` lines (or ``device_id token``)."""
    devices = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").split()
            if len(parts) < 2 and not line.endswith(","):
                raise LoadgenError(f"{path}:{number}: expected 'device_id,token'")
            devices.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return devices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.loadgen",
        description="Hold many device connections and send readings at a fixed rate.")
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/v1/device (or /mqtt with --mqtt)")
    parser.add_argument("--devices-file", required=True,
                        help="lines of device_id,token (tokens unused for MQTT)")
    parser.add_argument("--devices", type=int, default=0,
                        help="use the first N devices of the file (0 = all)")
    parser.add_argument("--mqtt", action="store_true", help="publish MQTT 3.1.1 QoS 0 over WebSocket instead")
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per device (default 1)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending after ramp-up")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--sources", type=int, default=1, help="source addresses 127.0.0.1..N (default 1)")
    parser.add_argument("--concurrency", type=int, default=256, help="handshakes in flight (default 256)")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for acks after sending")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.duration > 3600 or args.rate <= 0 or args.rate > 100:
        parser.error("--duration must be in (0, 3600] and --rate in (0, 100]")
    devices = read_device_file(args.devices_file)
    if args.devices:
        devices = devices[:args.devices]
    gen = LoadGen("mqtt" if args.mqtt else "edgewire", args.url, devices, args.workers, args.sources)
    try:
        conn = gen.connect(args.concurrency)
        gen.start(time.time() + 0.5, args.duration, args.rate, args.drain)
        results = gen.results(args.duration + args.drain + 60)
        print(json.dumps({"connect": conn, "workers": results}, indent=2))
    except LoadgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        gen.close()
        gen.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
