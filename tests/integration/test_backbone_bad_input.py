"""Bad input: each gets its documented error or close; nothing crashes; good devices are unaffected."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from protocol import wire
from tests.helpers.devices import GoodDevice, expect_close
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until_sync


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path, auth_timeout_s=2.0, max_batch=50, max_frame=8192)
    gateway.start()
    yield gateway
    gateway.stop()
    gateway.kill()


BAD_FRAMES = [
    ("not json at all", wire.E_BAD_JSON),
    ('{"t":"data","seq":"one","r":[{"m":{"temperature":20}}]}', wire.E_BAD_FRAME),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":"warm"}}]}', wire.E_BAD_FRAME),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":NaN}}]}', wire.E_BAD_JSON),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":Infinity}}]}', wire.E_BAD_JSON),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":1e999}}]}', wire.E_BAD_VALUE),
    ('{"t":"data","seq":1,"r":[{"m":{"humidity":250}}]}', wire.E_BAD_VALUE),
    (json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}] * 51}), wire.E_TOO_LARGE),
    ('{"t":"firmware_update","url":"http://x"}', wire.E_UNKNOWN_TYPE),
    (b"\x00\xffgarbage\x13\x37", wire.E_BINARY),
]


def test_each_bad_frame_gets_its_code_and_good_readings_around_it_are_stored(gw: GatewayProcess) -> None:
    token = gw.register("dev-bad")
    bystander = gw.register("bystander")

    async def run() -> list[dict[str, object]]:
        replies: list[dict[str, object]] = []
        async with GoodDevice(gw.device_url, "bystander", bystander) as good:
            async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                assert json.loads(await ws.recv())["t"] == "welcome"
                seq = 1
                for frame, _ in BAD_FRAMES:
                    # a good reading before each bad frame: it must be stored regardless
                    await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 21.0}}]}))
                    assert json.loads(await ws.recv()) == {"t": "ack", "seq": seq}
                    seq += 1
                    await ws.send(frame)
                    replies.append(json.loads(await ws.recv()))
                await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 22.0}}]}))
                assert json.loads(await ws.recv()) == {"t": "ack", "seq": seq}
            await good.wait_acked(good.acked + 3)
        return replies

    replies = asyncio.run(run())
    assert [r["code"] for r in replies] == [code for _, code in BAD_FRAMES]
    assert all(r["t"] == "error" and r["msg"] for r in replies)
    assert gw.seqs("dev-bad") == list(range(1, len(BAD_FRAMES) + 2))
    assert gw.proc is not None and gw.proc.poll() is None
    metrics = gw.metrics()
    assert metrics["edgewire_bad_frames_total"] >= len(BAD_FRAMES)


def test_oversized_frame_closes_1009(gw: GatewayProcess) -> None:
    token = gw.register("dev-big")

    async def run() -> int | None:
        async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"},
                           max_size=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"t": "status", "pad": "x" * 20000}))
            _, code = await expect_close(ws)
            return code

    assert asyncio.run(run()) == wire.CLOSE_TOO_BIG


def test_too_many_bad_frames_in_a_row_closes(gw: GatewayProcess) -> None:
    token = gw.register("dev-spam")

    async def run() -> tuple[list[dict[str, object]], int | None]:
        async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.recv()
            for _ in range(12):
                await ws.send("{broken")
            return await expect_close(ws)

    frames, code = asyncio.run(run())
    assert code == wire.CLOSE_TOO_MANY_ERRORS
    assert frames[-1]["code"] == wire.E_TOO_MANY_ERRORS


def test_data_before_auth_closes_4009(gw: GatewayProcess) -> None:
    gw.register("dev-x")

    async def run() -> tuple[list[dict[str, object]], int | None]:
        async with connect(gw.device_url) as ws:
            await ws.send(json.dumps({"t": "data", "device_id": "dev-x", "seq": 1,
                                      "r": [{"m": {"temperature": 20}}]}))
            return await expect_close(ws)

    frames, code = asyncio.run(run())
    assert code == wire.CLOSE_AUTH_REQUIRED and frames[-1]["code"] == wire.E_AUTH_REQUIRED
    assert gw.seqs("dev-x") == []


def test_auth_frame_never_sent_times_out(gw: GatewayProcess) -> None:
    silent = socket.create_connection(("127.0.0.1", gw.port), timeout=10)  # not even a request

    async def run() -> tuple[list[dict[str, object]], int | None]:
        async with connect(gw.device_url) as ws:
            return await expect_close(ws, timeout=10)

    frames, code = asyncio.run(run())
    assert code == wire.CLOSE_AUTH_TIMEOUT and frames[-1]["code"] == wire.E_AUTH_TIMEOUT
    assert silent.recv(100) == b""  # closed at its deadline, without an answer
    silent.close()

    def timed_out() -> dict[str, float]:
        return {key: value for key, value in gw.metrics().items() if "timed_out" in key}

    until_sync(lambda: sum(timed_out().values()) >= 2, 10, "both to be counted")
    assert timed_out() == {f'edgewire_connections_timed_out_total{{stage="{stage}"}}': n
                           for stage, n in (("silent", 1), ("partial", 0), ("requested", 1))}


def test_slowloris_handshake_is_dropped_while_others_flow(gw: GatewayProcess) -> None:
    token = gw.register("bystander")

    async def run() -> float:
        async with GoodDevice(gw.device_url, "bystander", token) as good:
            sockets = []
            for _ in range(20):
                sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
                sock.sendall(b"GET /v1/device HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                sockets.append(sock)
            started = time.monotonic()
            for sock in sockets:  # trickle one header byte at a time; the gateway must give up
                for _ in range(200):
                    try:
                        sock.sendall(b"X")
                    except OSError:
                        break
                    await asyncio.sleep(0.05)
                    if time.monotonic() - started > 8:
                        break
            closed = 0
            for sock in sockets:
                sock.settimeout(5)
                try:
                    data = sock.recv(1024)
                    closed += data == b"" or data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 5")
                except ConnectionResetError:
                    closed += 1
                except TimeoutError:
                    pass
                sock.close()
            before = good.acked
            await good.wait_acked(before + 3)
            return closed / len(sockets)

    assert asyncio.run(run()) == 1.0
