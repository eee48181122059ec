"""A failed commit is never acknowledged: the device is closed with 1013 and resends later."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from websockets.asyncio.client import connect

from gateway.config import GatewayConfig
from gateway.errors import StorageError
from gateway.factory import build_gateway
from gateway.storage.base import ReadingRow
from protocol import wire
from tests.helpers.devices import expect_close


def test_failed_commit_closes_1013_without_ack(tmp_path: Path) -> None:
    async def run() -> tuple[list[dict[str, object]], int | None, int, list[int]]:
        config = GatewayConfig(port=0, data_dir=str(tmp_path)).validate()
        gateway = await build_gateway(config)
        storage = gateway.storage
        real_store = storage.store
        fail = {"on": False}

        async def flaky_store(rows: list[ReadingRow]) -> list[ReadingRow]:
            if fail["on"]:
                raise StorageError("disk I/O error (injected)")
            return await real_store(rows)

        storage.store = flaky_store  # type: ignore[method-assign]
        await gateway.start()
        try:
            token = await gateway.registry.add("dev-s")
            url = f"ws://127.0.0.1:{gateway.port}/v1/device"
            async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.recv()
                await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
                assert json.loads(await ws.recv()) == {"t": "ack", "seq": 1}
                fail["on"] = True
                for seq in (2, 3):
                    await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 20}}]}))
                frames, code = await expect_close(ws)
            fail["on"] = False
            async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                welcome = json.loads(await ws.recv())
            return frames, code, welcome["last_seq"], await storage.seqs("dev-s")
        finally:
            await gateway.shutdown()

    frames, code, last_seq, seqs = asyncio.run(run())
    assert [f for f in frames if f["t"] == "ack"] == []
    assert frames[-1]["code"] == wire.E_STORAGE
    assert code == wire.CLOSE_TRY_AGAIN_LATER
    assert last_seq == 1 and seqs == [1]
