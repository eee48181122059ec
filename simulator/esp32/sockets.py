"""The emulated ESP32's TCP sockets, carried by the board process on the host's loopback.

rom/socket.py and rom/_ewselect.py on the board turn each socket call into one request
(simulator/esp32/peripherals.py); this table does the I/O with asyncio. Only loopback
addresses are reachable: the emulated access point's LAN is the host itself.
Errors are the lwIP errno numbers MicroPython raises on an ESP32.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

EAGAIN = 11
ECONNRESET = 104
ENOTCONN = 128
ETIMEDOUT = 110
ECONNREFUSED = 111
EHOSTUNREACH = 113
EBADF = 9
DNS_FAILED = -202  # getaddrinfo's error on the ESP32 port
POLLIN = 1
POLLOUT = 4
POLLHUP = 16
MAX_SOCKETS = 8  # lwIP's default on the ESP32 port (CONFIG_LWIP_MAX_SOCKETS 10, some in use)


class SocketError(Exception):
    """A socket call fails on the board with OSError(errno)."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


class _Conn(asyncio.Protocol):
    def __init__(self, changed: asyncio.Event) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.transport: asyncio.Transport | None = None
        self.changed = changed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.changed.set()

    def eof_received(self) -> bool | None:
        self.eof = True
        self.changed.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.changed.set()


def resolve(host: str) -> str:
    """The address of ``host`` as the board's DNS would give it: loopback names and IPv4 literals."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise SocketError(DNS_FAILED) from None


class SocketTable:
    """The board's open sockets by id; every call may wait, and may be interrupted by the caller."""

    def __init__(self) -> None:
        self._socks: dict[int, _Conn | None] = {}
        self._next = 3  # what lwIP's first socket fd would be after stdin/out/err
        self.changed = asyncio.Event()

    def new(self) -> int:
        if len(self._socks) >= MAX_SOCKETS:
            raise SocketError(23)  # ENFILE
        sid = self._next
        self._next += 1
        self._socks[sid] = None
        return sid

    def _get(self, sid: int) -> _Conn:
        if sid not in self._socks:
            raise SocketError(EBADF)
        conn = self._socks[sid]
        if conn is None:
            raise SocketError(ENOTCONN)
        return conn

    async def connect(self, sid: int, host: str, port: int, timeout_ms: int) -> None:
        if sid not in self._socks:
            raise SocketError(EBADF)
        if not ipaddress.IPv4Address(host).is_loopback:
            raise SocketError(EHOSTUNREACH)
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(self.changed), host, port),
                None if timeout_ms < 0 else max(timeout_ms, 1) / 1000)
        except TimeoutError:
            raise SocketError(ETIMEDOUT) from None
        except ConnectionRefusedError:
            raise SocketError(ECONNREFUSED) from None
        except OSError:
            raise SocketError(EHOSTUNREACH) from None
        self._socks[sid] = conn

    def send(self, sid: int, data: bytes) -> int:
        conn = self._get(sid)
        if conn.eof or conn.transport is None or conn.transport.is_closing():
            raise SocketError(ECONNRESET)
        conn.transport.write(data)
        return len(data)

    async def recv(self, sid: int, n: int, timeout_ms: int) -> bytes:
        conn = self._get(sid)
        if not conn.buffer and not conn.eof:
            if timeout_ms == 0:
                raise SocketError(EAGAIN)
            if not await self._wait(lambda: bool(conn.buffer) or conn.eof, timeout_ms):
                raise SocketError(ETIMEDOUT)
        data = bytes(conn.buffer[:n])
        del conn.buffer[:n]
        return data

    def ready(self, sid: int) -> int:
        conn = self._socks.get(sid)
        if conn is None:
            return POLLOUT if sid in self._socks else POLLHUP
        events = POLLOUT
        if conn.buffer or conn.eof:
            events |= POLLIN
        if conn.eof:
            events |= POLLHUP
        return events

    async def poll(self, sids: list[int], timeout_ms: int) -> list[tuple[int, int]]:
        def ready() -> list[tuple[int, int]]:
            return [(s, e) for s in sids if (e := self.ready(s)) & (POLLIN | POLLHUP)]

        found = ready()
        if found or timeout_ms == 0:
            return found
        await self._wait(lambda: bool(ready()), timeout_ms)
        return ready()

    async def _wait(self, done: object, timeout_ms: int) -> bool:
        assert callable(done)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_ms < 0 else loop.time() + timeout_ms / 1000
        while not done():
            self.changed.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True

    def close(self, sid: int) -> None:
        conn = self._socks.pop(sid, None)
        if conn is not None and conn.transport is not None:
            conn.transport.abort()

    def close_all(self) -> None:
        for sid in list(self._socks):
            self.close(sid)
