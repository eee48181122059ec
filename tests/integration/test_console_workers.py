"""The console's rule actions with two worker processes (gateway/workers.py): a rule put from a
dashboard stream on either worker reaches worker 1, the alert owner (gateway/alerts/relay.py),
and judges the next reading at once, wherever the device is; a delete likewise. Which worker
accepts a stream is the kernel's choice: several streams land on both."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.helpers.cluster import admin, data_frame, device
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until

STREAMS = 6


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path, workers=2, rate=1000.0, burst=1000.0) as gateway:
        yield gateway


async def act(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps({**frame, "id": "a"}))
    while True:
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if reply["t"] in ("ok", "error"):
            return reply


def test_rules_put_on_any_worker_judge_the_next_reading(gw: GatewayProcess) -> None:
    token = (gw.data_dir / "dashboard.token").read_text().strip()
    device_token = gw.register("WK-R1")

    async def run() -> None:
        url = f"{gw.url}/v1/dashboard?token={token}"
        for i in range(STREAMS):  # each on the worker the kernel picks
            async with connect(url) as ws:
                reply = await act(ws, {"t": "rule_put", "rule": {"id": f"hot-{i}", "metric": "temperature",
                                                                 "above": 40.0 + i}})
                assert reply["t"] == "ok" and reply["rule"]["updated_by"] == "dashboard:dashboard.token", reply
        rules = {r["id"] for r in (await admin(gw, {"t": "alert_rules"}))["rules"]}
        assert {f"hot-{i}" for i in range(STREAMS)} <= rules
        ws, _ = await device(gw, device_token)
        await ws.send(data_frame(1, 99.0))

        async def raised() -> set[str]:
            alerts = (await admin(gw, {"t": "alerts", "state": "open"}))["alerts"]
            return {a["rule"] for a in alerts if a["device"] == "WK-R1"}

        wanted = {f"hot-{i}" for i in range(STREAMS)}

        async def all_raised() -> bool:
            return wanted <= await raised()

        async def none_open() -> bool:
            return not wanted & await raised()

        await until(all_raised, 15, "every rule put on either worker raising on the reading")
        for i in range(STREAMS):
            async with connect(url) as dash:
                reply = await act(dash, {"t": "rule_delete", "rule_id": f"hot-{i}"})
                assert reply["t"] == "ok" and reply["cleared"] == 1, reply
        await until(none_open, 15, "the deleted rules' alerts cleared")
        await ws.close()

    asyncio.run(run())
