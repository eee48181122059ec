"""Minimal WebSocket client (RFC 6455) over ``socket``/``ssl`` for ws:// and wss://.

Sends text and binary frames (binary: CBOR data frames when the gateway selected the
subprotocol edgewire.v1.cbor, offered with ``connect(subprotocols=...)``; the chosen one is
``subprotocol``); receives text frames (binary frames received are ignored), client frames masked,
pings answered with pongs, fragmented messages reassembled up to
``max_frame`` bytes, close frames answered. Errors raise NetError; a close by
the peer sets NetError.close_code. Optional CA pinning: pass the CA
certificate (PEM or DER bytes) as ``ca``; without it a wss:// connection is
encrypted but the server is not verified.
"""

import binascii
import random
import select
import socket
import struct
import sys

from clock import ticks_ms
from errors import NetError
from micropython import const

from protocol.wire import CLOSE_TOO_BIG

OP_CONT = const(0)
OP_TEXT = const(1)
OP_BINARY = const(2)
OP_CLOSE = const(8)
OP_PING = const(9)
OP_PONG = const(10)
_POLLERR = const(8)  # select.POLLERR | POLLHUP fold into "readable": the read then fails
_ETIMEDOUT = const(110)
_MICROPYTHON = sys.implementation.name == "micropython"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def parse_url(url):
    """(tls, host, port, path) for ws://host[:port]/path or wss://..."""
    if url.startswith("wss://"):
        tls, rest, port = True, url[6:], 443
    elif url.startswith("ws://"):
        tls, rest, port = False, url[5:], 80
    else:
        raise NetError("gateway_url must start with ws:// or wss://")
    slash = rest.find("/")
    hostport, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    colon = hostport.rfind(":")
    if colon > 0 and "]" not in hostport[colon:]:
        port = int(hostport[colon + 1:])
        hostport = hostport[:colon]
    return tls, hostport.strip("[]"), port, path


def _key():
    raw = bytearray(16)
    for i in range(16):
        raw[i] = random.getrandbits(8)
    return binascii.b2a_base64(raw).strip()


class WSClient:
    """One WebSocket connection. ``connect()``, then ``send_text()`` / ``recv()``; ``close()``."""

    def __init__(self, url, ca=None, timeout_ms=5000, max_frame=16384):
        self.url = url
        self.ca = ca
        self.timeout_ms = timeout_ms
        self.max_frame = max_frame
        self.sock = None
        self._poller = None
        self._head = bytearray(14)
        self.close_code = 0
        self.last_rx_ms = 0  # ticks_ms of the last frame received (any opcode)
        self.subprotocol = None  # what the gateway selected of the subprotocols offered

    # -- connection
    def connect(self, headers=None, subprotocols=None):
        """Open TCP (+TLS) and do the HTTP upgrade, offering ``subprotocols`` (a list). Raises NetError."""
        tls, host, port, path = parse_url(self.url)
        try:
            addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock = sock
            sock.settimeout(self.timeout_ms / 1000)
            sock.connect(addr)
            if tls:
                sock = self._wrap(sock, host)
                self.sock = sock
            self._handshake(host, port, path, headers, subprotocols)
        except OSError as err:
            self.abort()
            if isinstance(err, NetError):
                raise
            raise NetError("cannot connect to " + host + ":" + str(port) + " (" + str(err) + ")")
        self._poller = select.poll()
        self._poller.register(self.sock, select.POLLIN)
        self.close_code = 0
        self.last_rx_ms = ticks_ms()

    def _wrap(self, sock, host):
        import ssl

        ca = self.ca
        if hasattr(ssl, "SSLContext"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if ca:
                if not _MICROPYTHON and ca[:5] == b"-----":
                    ca = ca.decode()  # CPython wants PEM as str, DER as bytes
                ctx.load_verify_locations(cadata=ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
            else:
                if hasattr(ctx, "check_hostname"):
                    ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            return ctx.wrap_socket(sock, server_hostname=host)
        if ca:  # MicroPython before SSLContext
            return ssl.wrap_socket(sock, server_hostname=host, cert_reqs=ssl.CERT_REQUIRED, cadata=ca)
        return ssl.wrap_socket(sock, server_hostname=host)

    def _handshake(self, host, port, path, headers, subprotocols):
        key = _key()
        lines = ["GET " + path + " HTTP/1.1", "Host: " + host + ":" + str(port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key.decode(), "Sec-WebSocket-Version: 13"]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        self.subprotocol = None
        if headers:
            for name in headers:
                lines.append(name + ": " + headers[name])
        self._write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status = self._readline()
        parts = status.split(None, 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        accept = None
        length = -1  # no Content-Length: the body runs to the end of the connection
        while True:
            line = self._readline()
            if not line:
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"sec-websocket-accept":
                accept = value.strip()
            elif name == b"sec-websocket-protocol":
                self.subprotocol = value.strip().decode()
            elif name == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        if code != 101:
            body = self._read_body(length)
            try:
                text = body[:200].decode()
            except UnicodeError:
                text = ""
            err = NetError("gateway refused the upgrade: HTTP " + str(code) + " " + text)
            err.http_status = code
            err.http_body = body  # read by the session (protocol.device.refusal_code)
            raise err
        if self.subprotocol is not None and self.subprotocol not in (subprotocols or ()):
            raise NetError("the gateway chose subprotocol " + self.subprotocol[:40] + ", which was not offered")
        try:
            import hashlib

            digest = hashlib.sha1(key + _GUID).digest()
        except (ImportError, AttributeError):  # a port without sha1: cannot check the accept key
            return
        if accept != binascii.b2a_base64(digest).strip():
            raise NetError("bad Sec-WebSocket-Accept from server; not a WebSocket endpoint?")

    # -- byte I/O
    def _write(self, data):
        sock = self.sock
        if hasattr(sock, "sendall"):
            sock.sendall(data)
            return
        view = memoryview(data)
        while view:
            n = sock.write(view)
            if n is None:
                n = 0
            view = view[n:]

    def _read_some(self, n):
        sock = self.sock
        data = sock.read(n) if hasattr(sock, "read") else sock.recv(n)
        if not data:
            raise NetError("connection closed by peer")
        return data

    def _read_exact(self, n):
        if n == 0:
            return b""
        data = self._read_some(n)
        while len(data) < n:
            data += self._read_some(n - len(data))
        return data

    def _read_body(self, length):
        """An HTTP refusal's body: Content-Length bytes, or up to the close; at most 512 bytes."""
        if 0 <= length <= 512:
            try:
                return self._read_exact(length)
            except (OSError, NetError):
                return b""
        data = b""
        try:
            while len(data) < 512:
                data += self._read_some(512 - len(data))
        except (OSError, NetError):  # the end of the connection (or the timeout) ends the body
            pass
        return data

    def _readline(self):
        """One HTTP header line, read byte by byte into a reused buffer (no per-byte garbage)."""
        one = self._head  # 14-byte scratch; the handshake sends no frames meanwhile
        view = memoryview(one)[:1]
        line = bytearray()
        while True:
            sock = self.sock
            n = sock.readinto(view) if hasattr(sock, "readinto") else sock.recv_into(view)
            if not n:
                raise NetError("connection closed by peer during the handshake")
            if one[0] == 10:  # \n
                return bytes(line).strip()
            line.append(one[0])
            if len(line) > 1024:
                raise NetError("HTTP header line too long")

    # -- frames
    def send_frame(self, opcode, payload=b""):
        """Send one masked frame (FIN set)."""
        if self.sock is None:
            raise NetError("not connected")
        n = len(payload)
        head = self._head
        head[0] = 0x80 | opcode
        if n < 126:
            head[1] = 0x80 | n
            pos = 2
        elif n < 65536:
            head[1] = 0x80 | 126
            struct.pack_into(">H", head, 2, n)
            pos = 4
        else:
            head[1] = 0x80 | 127
            struct.pack_into(">Q", head, 2, n)
            pos = 10
        mask = random.getrandbits(32)
        struct.pack_into(">I", head, pos, mask)
        key = head[pos:pos + 4]
        data = bytearray(payload)
        for i in range(n):
            data[i] ^= key[i & 3]
        try:
            self._write(head[:pos + 4])
            self._write(data)
        except OSError as err:
            self.abort()
            raise NetError("send failed (" + str(err) + ")")

    def send_text(self, text):
        self.send_frame(OP_TEXT, text.encode() if type(text) is str else text)

    def send(self, frame):
        """A protocol frame: str as a text frame (JSON), bytes/bytearray as a binary frame (CBOR)."""
        if type(frame) is str:
            self.send_frame(OP_TEXT, frame.encode())
        else:
            self.send_frame(OP_BINARY, frame)

    def ping(self, payload=b""):
        self.send_frame(OP_PING, payload)

    def readable(self, timeout_ms):
        sock = self.sock
        if sock is None:
            raise NetError("not connected")
        if hasattr(sock, "pending") and sock.pending():  # CPython ssl buffers records
            return True
        return bool(self._poller.poll(timeout_ms))

    def _read_frame(self):
        b0, b1 = self._read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read_exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read_exact(8))[0]
        key = self._read_exact(4) if b1 & 0x80 else None
        if n > self.max_frame:
            self.close(CLOSE_TOO_BIG)
            raise NetError("frame of " + str(n) + " bytes exceeds " + str(self.max_frame))
        data = self._read_exact(n)
        self.last_rx_ms = ticks_ms()
        if key is not None:
            data = bytearray(data)
            for i in range(n):
                data[i] ^= key[i & 3]
        return b0 & 0x80, b0 & 0x0F, data

    def recv(self, timeout_ms=0):
        """The next text message as str, or None if none arrives within ``timeout_ms``.

        Answers pings, skips pongs and binary messages. Raises NetError when the
        connection ends (``close_code`` holds the peer's close code, or 0).
        """
        message = None
        kind = 0
        try:
            while True:
                if message is None and not self.readable(timeout_ms):
                    return None
                fin, opcode, data = self._read_frame()
                if opcode == OP_PING:
                    self.send_frame(OP_PONG, data)
                    continue
                if opcode == OP_PONG:
                    continue
                if opcode == OP_CLOSE:
                    self._closed_by_peer(data)
                if opcode == OP_CONT:
                    if message is None:
                        raise NetError("continuation frame without a first frame")
                    message += data
                    if len(message) > self.max_frame:
                        self.close(CLOSE_TOO_BIG)
                        raise NetError("fragmented message exceeds " + str(self.max_frame) + " bytes")
                else:
                    message = data
                    kind = opcode
                if fin:
                    if kind == OP_TEXT:
                        return bytes(message).decode()
                    message = None  # binary: not part of the protocol; ignore
        except NetError:
            self.abort()
            raise
        except (OSError, ValueError) as err:  # timeout mid-frame, reset, bad UTF-8
            self.abort()
            raise NetError("receive failed (" + str(err) + ")")

    def _closed_by_peer(self, data):
        code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005
        reason = bytes(data[2:]).decode() if len(data) > 2 else ""
        try:
            self.send_frame(OP_CLOSE, data[:2])
        except OSError:
            pass
        self.abort()
        err = NetError("gateway closed the connection: " + str(code) + " " + reason[:120])
        err.close_code = code
        self.close_code = code
        raise err

    def close(self, code=1000):
        """Send a close frame (best effort) and drop the socket."""
        if self.sock is not None:
            try:
                self.send_frame(OP_CLOSE, struct.pack(">H", code))
            except OSError:
                pass
        self.abort()

    def abort(self):
        """Drop the socket without a close handshake."""
        sock = self.sock
        self.sock = None
        self._poller = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
