"""Rate limit: a device at 100 frames/s is slowed, then disconnected; the others keep flowing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from protocol import wire
from tests.helpers.devices import GoodDevice
from tests.helpers.gateway import GatewayProcess


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path)  # default limit: 10 frames/s, burst 20
    gateway.start()
    yield gateway
    gateway.stop()
    gateway.kill()


def test_flooding_device_is_slowed_then_disconnected(gw: GatewayProcess) -> None:
    flood = gw.register("flood")
    others = [(f"calm-{i}", gw.register(f"calm-{i}")) for i in range(3)]

    async def run() -> tuple[list[dict[str, object]], int | None, list[int]]:
        frames: list[dict[str, object]] = []
        async with GoodDevice(gw.device_url, *others[0]) as a, GoodDevice(gw.device_url, *others[1]) as b, \
                GoodDevice(gw.device_url, *others[2]) as c:
            marks = [d.acked for d in (a, b, c)]
            async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {flood}"}) as ws:
                await ws.recv()

                async def reader() -> None:
                    with contextlib.suppress(ConnectionClosed):
                        async for text in ws:
                            frames.append(json.loads(text))

                read_task = asyncio.get_running_loop().create_task(reader())
                try:
                    for seq in range(1, 501):  # 100 frames/s for at most 5 s, ignoring slow-downs
                        await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 20}}]}))
                        await asyncio.sleep(0.01)
                except ConnectionClosed:
                    pass
                await asyncio.wait_for(read_task, 10)
                code = ws.close_code
            for device, mark in zip((a, b, c), marks, strict=True):
                await device.wait_acked(mark + 10)
            return frames, code, [d.acked - m for d, m in zip((a, b, c), marks, strict=True)]

    frames, code, progress = asyncio.run(run())
    slows = [f for f in frames if f["t"] == "slow"]
    assert slows, "the flooding device was never told to slow down"
    assert slows[0]["rate"] == 10.0 and int(slows[0]["retry_ms"]) > 0  # type: ignore[call-overload]
    assert code == wire.CLOSE_RATE_LIMITED
    assert frames[-1]["code"] == wire.E_RATE
    assert all(p >= 10 for p in progress)
    # every acknowledged reading of the flooder is stored, nothing beyond the acks
    acked = max((int(f["seq"]) for f in frames if f["t"] == "ack"), default=0)  # type: ignore[call-overload]
    assert gw.seqs("flood") == list(range(1, acked + 1))
