"""The load generator's WebSocket client: websockets' sans-I/O ClientProtocol in an asyncio.Protocol.

One ``WsClient`` per connection and no task per connection: the event loop calls
``data_received``, which feeds ``websockets.client.ClientProtocol`` (handshake, framing,
masking, pings, the closing handshake, message size limit) and hands complete messages to
``on_message``. Sending goes through the same protocol object and straight to the transport.
So 10,000 connections cost 10,000 small objects, not 10,000 tasks with their futures.

Every connection goes to 127.0.0.x only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import CONNECTING, OPEN
from websockets.typing import BytesLike, Subprotocol
from websockets.uri import WebSocketURI, parse_uri

from bench.errors import LoadgenError

__all__ = ["LOOPBACK_PREFIX", "MAX_MESSAGE", "WsClient", "open_connection", "parse_ws_url", "wait_until"]

LOOPBACK_PREFIX = "127."
MAX_MESSAGE = 1 << 24  # largest message accepted from the server (a dashboard snapshot of 60k devices)
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
# One logger for every connection (websockets would look one up per connection); DEBUG on it
# logs each frame of each connection, so it is for a handful of connections only.
_LOG = logging.getLogger("bench.wsclient")


def _is_loopback(host: str) -> bool:
    return host.startswith(LOOPBACK_PREFIX) or host == "localhost"


def parse_ws_url(url: str) -> WebSocketURI:
    """The parsed ws:// URL, refused unless it names a loopback host."""
    try:
        uri = parse_uri(url)
    except InvalidURI as err:
        raise LoadgenError(f"{url}: not a WebSocket URL ({err})") from None
    if uri.secure:
        raise LoadgenError(f"{url}: only ws:// URLs are supported by the load generator")
    if not _is_loopback(uri.host):
        raise LoadgenError(f"{url}: the load generator only targets 127.0.0.x")
    return uri


def _handshake_error(exc: Exception) -> str:
    if isinstance(exc, InvalidStatus):
        response = exc.response
        return f"HTTP {response.status_code}: {bytes(response.body[:200]).decode('utf-8', 'replace')}"
    cause = exc.__cause__
    return f"{exc} ({cause})" if cause is not None else str(exc)


class WsClient(asyncio.Protocol):
    """One WebSocket client connection (RFC 6455, no extensions) on ``websockets.client.ClientProtocol``.

    Subclasses override ``on_open``, ``on_message(opcode, payload)`` and ``on_closed``.
    websockets answers pings and echoes the server's close frame; the server's close code
    is ``close_code`` (0 while none was received).
    """

    __slots__ = ("_frag_op", "_frags", "closed", "error", "transport", "upgraded", "waiter", "ws")

    def __init__(self, uri: WebSocketURI, subprotocol: str | Sequence[str] | None = None,
                 max_size: int = MAX_MESSAGE) -> None:
        offered = [subprotocol] if isinstance(subprotocol, str) else list(subprotocol or ())
        self.ws = ClientProtocol(uri, subprotocols=[Subprotocol(name) for name in offered] or None,
                                 max_size=max_size, logger=_LOG)
        self.transport: asyncio.Transport | None = None
        self.upgraded = False  # the server answered 101 (stays True after a close)
        self.closed = False  # the TCP connection is gone
        self.error = ""
        self.waiter: asyncio.Future[None] | None = None  # set only while someone waits for a state change
        self._frags: list[BytesLike] = []  # data frames of a fragmented message so far
        self._frag_op = _TEXT

    @property
    def open(self) -> bool:
        """Upgraded, and no close frame sent or received: sending is allowed."""
        return self.ws.state is OPEN

    @property
    def close_code(self) -> int:
        close = self.ws.close_rcvd
        return 0 if close is None else int(close.code)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        ws = self.ws
        ws.send_request(ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        self._flush()  # pongs and the close echo go out before anything a handler sends
        events = ws.events_received()
        if not self.upgraded:
            self._handshake()
        for event in events:
            if type(event) is Frame:
                opcode = event.opcode
                if opcode is _TEXT or opcode is _BINARY:
                    if event.fin:
                        self.on_message(opcode, event.data)
                    else:
                        self._frag_op = opcode
                        self._frags = [event.data]
                elif opcode is _CONT:
                    self._frags.append(event.data)
                    if event.fin:
                        payload = b"".join(self._frags)
                        self._frags = []
                        self.on_message(self._frag_op, payload)
        if self.waiter is not None:
            self._wake()

    def _handshake(self) -> None:
        ws = self.ws
        if ws.handshake_exc is not None:
            self._fail(_handshake_error(ws.handshake_exc))
        elif ws.state is not CONNECTING:  # OPEN, or already CLOSING if a close frame came with the 101
            self.upgraded = True
            self.on_open()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent; moves the protocol to CLOSED
        if not self.closed:
            self.closed = True
            if exc is not None and not self.error:
                self.error = str(exc) or type(exc).__name__
            self.on_closed()
        self._wake()

    # -- sending
    def _flush(self) -> None:
        transport = self.transport
        for data in self.ws.data_to_send():
            if transport is None or transport.is_closing():
                continue
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()  # websockets' SEND_EOF: half-close

    def send_text(self, text: str | bytes) -> bool:
        """Send one text message; False when the connection is not open."""
        ws = self.ws
        if ws.state is not OPEN:
            return False
        ws.send_text(text.encode() if isinstance(text, str) else text)
        writes = ws.data_to_send()  # one masked frame
        transport = self.transport
        if transport is not None and not transport.is_closing():
            for data in writes:
                transport.write(data)
        return True

    def send_binary(self, data: BytesLike) -> bool:
        """Send one binary message; False when the connection is not open."""
        ws = self.ws
        if ws.state is not OPEN:
            return False
        ws.send_binary(data)
        self._flush()
        return True

    def close(self, code: int = 1000) -> None:
        """Send a close frame (if open) and close the TCP connection."""
        if self.ws.state is OPEN:
            self.ws.send_close(code)
            self._flush()
        if self.transport is not None:
            self.transport.close()

    def _fail(self, message: str) -> None:
        self.error = message
        if self.transport is not None:
            self.transport.abort()

    # -- hooks
    def on_open(self) -> None:
        """Handshake completed."""

    def on_message(self, opcode: int, payload: BytesLike) -> None:
        """A complete text or binary message arrived (text is not decoded: UTF-8 bytes)."""

    def on_closed(self) -> None:
        """The TCP connection is gone."""


async def open_connection(factory: Callable[[], WsClient], host: str, port: int,
                          source: str | None = None, timeout: float = 30.0) -> WsClient:
    """Connect ``factory()`` to host:port (from source address ``source``) and wait for the upgrade.

    Raises LoadgenError (with the server's answer) when the upgrade fails.
    """
    if not _is_loopback(host):
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
