"""The load generator's raw WebSocket client against a real websockets server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from simulator import loadgen as lg

pytestmark = pytest.mark.timeout(60)


class Recorder(lg.WsClient):
    """Collects what arrives."""

    def __init__(self, factory: Callable[[str], bytes]) -> None:
        super().__init__(factory)
        self.messages: list[tuple[int, bytes]] = []

    def on_message(self, opcode: int, payload: bytes) -> None:
        self.messages.append((opcode, payload))


async def _server(handler: Callable[[ServerConnection], Awaitable[None]], **kw: Any) -> Any:
    return await serve(handler, "127.0.0.1", 0, **kw)


async def _client(server: Any, path: str = "/", subprotocol: str | None = None) -> Recorder:
    port = server.sockets[0].getsockname()[1]
    factory = lg._request_factory("127.0.0.1", port, path, subprotocol)
    client = await lg.open_connection(lambda: Recorder(factory), "127.0.0.1", port, timeout=10)
    assert isinstance(client, Recorder)
    return client


async def _wait_messages(client: Recorder, n: int) -> list[tuple[int, bytes]]:
    assert await lg.wait_until(client, lambda: len(client.messages) >= n, 10), client.messages
    return client.messages


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[Any]:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    server = await _server(handler, compression=None)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 30))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_and_binary_round_trip_every_length_encoding(size: int) -> None:
    run(lambda: _round_trip(size))


async def _round_trip(size: int) -> None:
    async with echo_server() as echo:
        client = await _client(echo)
        text = ("é" * (size // 2)).encode()[:size].decode("utf-8", "ignore").encode()  # valid UTF-8
        blob = os.urandom(size)
        assert client.send_text(text)
        assert client.send_binary(blob)
        got = await _wait_messages(client, 2)
        # The server unmasked our frames: equal payloads prove the masking is right.
        assert got[0] == (lg.OP_TEXT, text)
        assert got[1] == (lg.OP_BINARY, blob)
        client.close()


def test_many_small_frames_in_one_write_are_split_correctly() -> None:
    run(_many_small)


async def _many_small() -> None:
    async with echo_server() as echo:
        client = await _client(echo)
        for i in range(300):
            client.send_text(f'{{"i":{i}}}')
        got = await _wait_messages(client, 300)
        assert [p for _, p in got] == [f'{{"i":{i}}}'.encode() for i in range(300)]
        client.close()


def test_server_ping_is_answered_with_pong() -> None:
    run(_server_ping_is_answered_with_pong)


async def _server_ping_is_answered_with_pong() -> None:
    pong_seen = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        waiter = await ws.ping(b"hello")
        await asyncio.wait_for(waiter, 5)
        pong_seen.set_result(True)
        await ws.send("after-pong")
        await ws.wait_closed()

    server = await _server(handler, compression=None, ping_interval=None)
    try:
        client = await _client(server)
        assert await asyncio.wait_for(pong_seen, 10)
        assert (await _wait_messages(client, 1))[0] == (lg.OP_TEXT, b"after-pong")
        client.close()
    finally:
        server.close()
        await server.wait_closed()


def test_server_close_code_is_reported_and_echoed() -> None:
    run(_server_close_code_is_reported_and_echoed)


async def _server_close_code_is_reported_and_echoed() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(4005, "replaced")

    server = await _server(handler, compression=None)
    try:
        client = await _client(server)
        assert await lg.wait_until(client, lambda: client.closed, 10)
        assert client.closed
        assert client.close_code == 4005
    finally:
        server.close()
        await server.wait_closed()


def test_refused_upgrade_raises_with_status_and_body() -> None:
    run(_refused_upgrade_raises_with_status_and_body)


async def _refused_upgrade_raises_with_status_and_body() -> None:
    def refuse(ws: ServerConnection, request: Request) -> Response:
        body = b'{"code":"auth_failed","message":"authentication failed"}'
        return Response(401, "Unauthorized", Headers({"Content-Length": str(len(body))}), body)

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("never upgraded")

    server = await _server(handler, process_request=refuse)
    try:
        with pytest.raises(lg.LoadgenError, match=r"HTTP 401.*auth_failed"):
            await _client(server)
    finally:
        server.close()
        await server.wait_closed()


def test_subprotocol_is_offered() -> None:
    run(_subprotocol_is_offered)


async def _subprotocol_is_offered() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(ws.subprotocol or "none")
        await ws.wait_closed()

    server = await _server(handler, subprotocols=["mqtt"])  # type: ignore[list-item]
    try:
        client = await _client(server, subprotocol="mqtt")
        assert (await _wait_messages(client, 1))[0] == (lg.OP_TEXT, b"mqtt")
        client.close()
    finally:
        server.close()
        await server.wait_closed()


def test_non_loopback_targets_are_refused() -> None:
    run(_non_loopback_targets_are_refused)


async def _non_loopback_targets_are_refused() -> None:
    with pytest.raises(lg.LoadgenError, match=r"127\.0\.0\.x"):
        await lg.open_connection(lambda: Recorder(lambda k: b""), "10.0.0.1", 80)
    with pytest.raises(lg.LoadgenError, match=r"127\.0\.0\.x"):
        lg.parse_ws_url("ws://example.com:80/v1/device")


# ---------------------------------------------------------------- framing units

def test_frame_parser_handles_every_split_point_fragments_and_masks() -> None:
    mask = b"\x01\x02\x03\x04"
    stream = (lg.encode_frame(lg.OP_TEXT, b"abc", None)
              + lg.encode_frame(lg.OP_TEXT, b"hel", None, fin=False)
              + lg.encode_frame(lg.OP_PING, b"p", None)  # control frame between fragments
              + lg.encode_frame(lg.OP_CONT, b"lo", mask)
              + lg.encode_frame(lg.OP_BINARY, bytes(300), None))
    expected = [(lg.OP_TEXT, b"abc"), (lg.OP_PING, b"p"), (lg.OP_TEXT, b"hello"), (lg.OP_BINARY, bytes(300))]
    for cut in range(len(stream) + 1):
        parser = lg.FrameParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == expected, cut
    parser = lg.FrameParser()
    assert [m for byte in stream for m in parser.feed(bytes([byte]))] == expected


def test_encode_frame_header_and_mask() -> None:
    frame = lg.encode_frame(lg.OP_TEXT, b"Hello", b"\x37\xfa\x21\x3d")
    assert frame == bytes.fromhex("818537fa213d7f9f4d5158")  # RFC 6455 section 5.7 example
    assert lg.encode_frame(lg.OP_BINARY, bytes(126), None)[:4] == b"\x82\x7e\x00\x7e"
    assert lg.encode_frame(lg.OP_BINARY, bytes(65536), None)[:10] == b"\x82\x7f" + struct.pack("!Q", 65536)


def test_accept_key_matches_rfc_example() -> None:
    assert lg.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_oversized_frame_is_refused() -> None:
    parser = lg.FrameParser(max_size=10)
    with pytest.raises(lg.LoadgenError, match="exceeds"):
        parser.feed(lg.encode_frame(lg.OP_TEXT, bytes(11), None))


def test_pure_python_mask_matches_c_helper() -> None:
    payload = os.urandom(1001)
    mask = os.urandom(4)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert lg.apply_mask(payload, mask) == expected
    saved = lg._c_apply_mask
    try:
        lg._c_apply_mask = None
        assert lg.apply_mask(payload, mask) == expected
        assert lg.apply_mask(b"", mask) == b""
    finally:
        lg._c_apply_mask = saved
