"""The load generator's WebSocket client (websockets' ClientProtocol in an asyncio.Protocol)
against a real websockets server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.typing import BytesLike, Subprotocol

from bench.errors import BenchError, LoadgenError
from bench.wsclient import WsClient, open_connection, parse_ws_url, wait_until

pytestmark = pytest.mark.timeout(60)


class Recorder(WsClient):
    """Collects what arrives."""

    def __init__(self, port: int, path: str = "/", subprotocol: str | None = None, max_size: int = 1 << 20) -> None:
        super().__init__(parse_ws_url(f"ws://127.0.0.1:{port}{path}"), subprotocol, max_size)
        self.messages: list[tuple[int, bytes]] = []
        self.opened = 0
        self.closed_calls = 0

    def on_open(self) -> None:
        self.opened += 1

    def on_message(self, opcode: int, payload: BytesLike) -> None:
        self.messages.append((opcode, bytes(payload)))

    def on_closed(self) -> None:
        self.closed_calls += 1


def _port(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


async def _client(server: Server, path: str = "/", subprotocol: str | None = None,
                  max_size: int = 1 << 20) -> Recorder:
    port = _port(server)
    client = await open_connection(lambda: Recorder(port, path, subprotocol, max_size), "127.0.0.1", port,
                                   timeout=10)
    assert isinstance(client, Recorder)
    return client


async def _wait_messages(client: Recorder, n: int) -> list[tuple[int, bytes]]:
    assert await wait_until(client, lambda: len(client.messages) >= n, 10), client.messages
    return client.messages


@contextlib.asynccontextmanager
async def running(handler: Callable[[ServerConnection], Awaitable[None]], **kw: Any) -> AsyncIterator[Server]:
    server = await serve(handler, "127.0.0.1", 0, **kw)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), 30)

    asyncio.run(bounded())


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_and_binary_round_trip_every_length_encoding(size: int) -> None:
    async def check() -> None:
        async with running(_echo, compression=None, max_size=1 << 20) as server:
            client = await _client(server)
            assert client.opened == 1 and client.open
            text = ("é" * size).encode()[:size].decode("utf-8", "ignore").encode()  # valid UTF-8
            blob = os.urandom(size)
            assert client.send_text(text)
            assert client.send_binary(blob)
            got = await _wait_messages(client, 2)
            # The server unmasked our frames: equal payloads prove the masking is right.
            assert got == [(Opcode.TEXT, text), (Opcode.BINARY, blob)]
            client.close()

    run(check)


def test_many_small_messages_in_one_read_are_all_delivered_in_order() -> None:
    async def check() -> None:
        async with running(_echo, compression=None) as server:
            client = await _client(server)
            for i in range(300):
                client.send_text(f'{{"i":{i}}}')
            got = await _wait_messages(client, 300)
            assert [p for _, p in got] == [f'{{"i":{i}}}'.encode() for i in range(300)]
            client.close()

    run(check)


def test_fragmented_message_is_reassembled() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(["frag", "mented", " text"])  # websockets sends an iterable as fragments
        await ws.send([b"\x00\x01", b"\x02"])
        await ws.wait_closed()

    async def check() -> None:
        async with running(handler, compression=None) as server:
            client = await _client(server)
            got = await _wait_messages(client, 2)
            assert got == [(Opcode.TEXT, b"fragmented text"), (Opcode.BINARY, b"\x00\x01\x02")]
            client.close()

    run(check)


def test_server_ping_is_answered_with_pong() -> None:
    async def check() -> None:
        pong_seen = asyncio.get_running_loop().create_future()

        async def handler(ws: ServerConnection) -> None:
            waiter = await ws.ping(b"hello")
            await asyncio.wait_for(waiter, 5)
            pong_seen.set_result(True)
            await ws.send("after-pong")
            await ws.wait_closed()

        async with running(handler, compression=None, ping_interval=None) as server:
            client = await _client(server)
            assert await asyncio.wait_for(pong_seen, 10)
            assert (await _wait_messages(client, 1))[0] == (Opcode.TEXT, b"after-pong")
            client.close()

    run(check)


def test_server_close_code_is_reported_and_the_close_handshake_completes() -> None:
    async def check() -> None:
        server_saw: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

        async def handler(ws: ServerConnection) -> None:
            await ws.close(4005, "replaced")
            server_saw.set_result(ws.close_code)  # the client echoed the close frame

        async with running(handler, compression=None) as server:
            client = await _client(server)
            assert await wait_until(client, lambda: client.closed, 10)
            assert client.close_code == 4005
            assert client.closed_calls == 1 and not client.open
            assert await asyncio.wait_for(server_saw, 10) == 4005

    run(check)


def test_client_close_sends_its_code() -> None:
    async def check() -> None:
        code: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

        async def handler(ws: ServerConnection) -> None:
            await ws.wait_closed()
            code.set_result(ws.close_code)

        async with running(handler, compression=None) as server:
            client = await _client(server)
            client.close(1001)
            assert not client.open and not client.send_text("late")
            assert await asyncio.wait_for(code, 10) == 1001

    run(check)


def test_message_over_the_limit_fails_the_connection_with_1009() -> None:
    async def check() -> None:
        code: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

        async def handler(ws: ServerConnection) -> None:
            await ws.send("x" * 2000)
            await ws.wait_closed()
            code.set_result(ws.close_code)

        async with running(handler, compression=None) as server:
            client = await _client(server, max_size=1000)
            assert await wait_until(client, lambda: client.closed, 10)
            assert client.messages == []
            assert await asyncio.wait_for(code, 10) == 1009

    run(check)


def test_refused_upgrade_raises_with_status_and_body() -> None:
    def refuse(ws: ServerConnection, request: Request) -> Response:
        body = b'{"code":"auth_failed","message":"authentication failed"}'
        return Response(401, "Unauthorized", Headers({"Content-Length": str(len(body))}), body)

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("never upgraded")

    async def check() -> None:
        async with running(handler, process_request=refuse) as server:
            with pytest.raises(LoadgenError, match=r"HTTP 401.*auth_failed"):
                await _client(server)

    run(check)


def test_subprotocol_is_offered_and_accepted() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(ws.subprotocol or "none")
        await ws.wait_closed()

    async def check() -> None:
        async with running(handler, subprotocols=[Subprotocol("mqtt")]) as server:
            client = await _client(server, subprotocol="mqtt")
            assert (await _wait_messages(client, 1))[0] == (Opcode.TEXT, b"mqtt")
            assert client.ws.subprotocol == "mqtt"
            client.close()

    run(check)


def test_non_loopback_and_non_ws_targets_are_refused() -> None:
    async def check() -> None:
        with pytest.raises(LoadgenError, match=r"127\.0\.0\.x"):
            await open_connection(lambda: Recorder(80), "10.0.0.1", 80)

    run(check)
    with pytest.raises(LoadgenError, match=r"127\.0\.0\.x"):
        parse_ws_url("ws://example.com:80/v1/device")
    with pytest.raises(LoadgenError, match="ws://"):
        parse_ws_url("wss://127.0.0.1:443/v1/device")
    with pytest.raises(LoadgenError, match="not a WebSocket URL"):
        parse_ws_url("http://127.0.0.1/")
    assert parse_ws_url("ws://127.0.0.2:8080/v1/device").resource_name == "/v1/device"
    assert issubclass(LoadgenError, BenchError) and issubclass(BenchError, RuntimeError)
