"""Fan-out after the commit (gateway/fanout.py), through a real gateway on loopback: the alert rules
judge each reading exactly once, also when it is resent after a failed commit or resent although
already stored, and the dashboard hub never sees a reading whose commit failed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from gateway.alerts.rules import parse_rules
from gateway.config import GatewayConfig
from gateway.errors import StorageError
from gateway.factory import build_gateway
from gateway.server import Gateway
from gateway.storage.base import ReadingRow
from protocol import wire
from tests.helpers.devices import expect_close
from tests.helpers.waiting import until

DEVICE = "dev-f"
# Fires once the value has not moved for 1 s over at least 4 readings; its text counts them.
STUCK = {"id": "stuck", "type": "stuck", "metric": "temperature", "window_s": 1, "min_readings": 4}


class Faults:
    """What the test makes the gateway's storage do (patched onto the real SQLite storage)."""

    def __init__(self) -> None:
        self.fail_store = False  # store raises: nothing stored, the device is closed with 1013
        self.hold: asyncio.Event | None = None  # set: a failing store waits for it first
        self.holding = asyncio.Event()  # a failing store is waiting for ``hold``
        self.stale_welcome = False  # the next welcome's last_seq is 0 (then back to the truth)


Body = Callable[[Gateway, Faults, Callable[[], Awaitable[ClientConnection]]], Awaitable[Any]]


def with_gateway(tmp_path: Path, body: Body) -> Any:
    async def main() -> Any:
        config = GatewayConfig(port=0, data_dir=str(tmp_path), alerts=parse_rules([STUCK])).validate()
        gateway = await build_gateway(config)
        storage = gateway.storage
        faults = Faults()
        real_store, real_last_seq = storage.store, storage.last_seq

        async def store(rows: list[ReadingRow]) -> list[ReadingRow]:
            if faults.fail_store:
                if faults.hold is not None:
                    faults.holding.set()
                    await faults.hold.wait()
                raise StorageError("disk I/O error (injected)")
            return await real_store(rows)

        async def last_seq(device_id: str) -> int:
            if faults.stale_welcome:
                faults.stale_welcome = False
                return 0
            return await real_last_seq(device_id)

        storage.store = store  # type: ignore[method-assign]
        storage.last_seq = last_seq  # type: ignore[method-assign]
        await gateway.start()
        try:
            token = await gateway.registry.add(DEVICE)

            async def device() -> ClientConnection:
                ws = await connect(f"ws://127.0.0.1:{gateway.port}/v1/device",
                                   additional_headers={"Authorization": f"Bearer {token}"})
                welcome = json.loads(await ws.recv())
                assert welcome["t"] == "welcome"
                return ws

            return await body(gateway, faults, device)
        finally:
            await gateway.shutdown()

    return asyncio.run(main())


def frame(first: int, last: int, t0: int, value: float = 20.0) -> str:
    """Readings first..last of ``value``, read one second apart from ``t0`` (ms)."""
    return json.dumps({"t": "data", "seq": first,
                       "r": [{"m": {"temperature": value}, "ts": t0 + (seq - 1) * 1000}
                             for seq in range(first, last + 1)]})


async def send(ws: ClientConnection, data: str) -> dict[str, Any]:
    await ws.send(data)
    reply: dict[str, Any] = json.loads(await ws.recv())
    return reply


async def stuck_alert(gateway: Gateway) -> dict[str, Any]:
    await until(lambda: bool(gateway.alerts.open_alerts(DEVICE)), what="the stuck alert")
    [alert] = gateway.alerts.open_alerts(DEVICE)
    return alert


def test_a_reading_resent_after_a_failed_commit_is_judged_once(tmp_path: Path) -> None:
    """The device gets no ack (the commit fails), reconnects, and resends on the new connection,
    which replaces the old one (so the device never went offline: the rule keeps its run)."""

    async def body(gateway: Gateway, faults: Faults, device: Callable[[], Awaitable[ClientConnection]]) -> None:
        t0 = int(time.time() * 1000) - 60_000
        faults.fail_store, faults.hold = True, asyncio.Event()
        first = await device()
        await first.send(frame(1, 3, t0))  # three readings: not enough for the rule yet
        await faults.holding.wait()  # their commit is under way
        second = asyncio.ensure_future(device())  # the device gave up waiting for the ack
        await until(lambda: gateway.counters.replaced == 1, what="the new connection to replace the old one")
        faults.fail_store = False
        faults.hold.set()  # the commit fails: the old connection is closed (1013), nothing acked
        frames, code = await expect_close(first)
        assert code == wire.CLOSE_TRY_AGAIN_LATER and [f for f in frames if f["t"] == "ack"] == []
        async with await second as ws:  # its welcome said last_seq 0: it resends everything
            assert await send(ws, frame(1, 3, t0)) == {"t": "ack", "seq": 3}
            assert await send(ws, frame(4, 4, t0)) == {"t": "ack", "seq": 4}
            alert = await stuck_alert(gateway)
        # Judged once each: the run is readings 1..4 (the failed first sending counted nothing).
        assert "(4 readings" in alert["text"], alert["text"]
        assert await gateway.storage.seqs(DEVICE) == [1, 2, 3, 4]

    with_gateway(tmp_path, body)


def test_a_resend_of_readings_already_stored_is_not_judged_again(tmp_path: Path) -> None:
    """The commit succeeded but the device never got its ack; it reconnects (replacing its old
    connection), and the welcome did not know of the commit yet (another worker or gateway stored
    the frame meanwhile): the device resends seqs already stored."""

    async def body(gateway: Gateway, faults: Faults, device: Callable[[], Awaitable[ClientConnection]]) -> None:
        t0 = int(time.time() * 1000) - 60_000
        first = await device()
        assert await send(first, frame(1, 3, t0)) == {"t": "ack", "seq": 3}
        faults.stale_welcome = True
        async with await device() as ws:
            assert await send(ws, frame(1, 3, t0)) == {"t": "ack", "seq": 3}  # stored already: acked again
            assert await send(ws, frame(4, 4, t0)) == {"t": "ack", "seq": 4}
            alert = await stuck_alert(gateway)
        await first.close()
        assert "(4 readings" in alert["text"], alert["text"]
        assert gateway.counters.replaced == 1 and await gateway.storage.seqs(DEVICE) == [1, 2, 3, 4]

    with_gateway(tmp_path, body)


def test_the_dashboard_never_shows_a_reading_whose_commit_failed(tmp_path: Path) -> None:
    async def body(gateway: Gateway, faults: Faults, device: Callable[[], Awaitable[ClientConnection]]) -> None:
        t0 = int(time.time() * 1000) - 60_000
        view = gateway.hub.view(DEVICE)

        def latest() -> float | None:
            entry = view.latest.get("temperature")
            return None if entry is None else entry[0]

        async with await device() as ws:
            assert await send(ws, frame(1, 1, t0, 20.0)) == {"t": "ack", "seq": 1}
            await until(lambda: latest() == 20.0, what="the stored reading on the dashboard")
            faults.fail_store = True
            await ws.send(json.dumps({"t": "data", "seq": 2, "boot": "b2",
                                      "r": [{"m": {"temperature": 99.0}, "ts": t0 + 1000}]}))
            _, code = await expect_close(ws)
        assert code == wire.CLOSE_TRY_AGAIN_LATER
        assert latest() == 20.0 and view.boot is None  # neither its value nor its frame's boot id
        faults.fail_store = False
        async with await device() as ws:  # resent and stored: now it shows
            assert await send(ws, json.dumps({"t": "data", "seq": 2, "boot": "b2",
                                              "r": [{"m": {"temperature": 99.0}, "ts": t0 + 1000}]})) == {
                "t": "ack", "seq": 2}
            await until(lambda: latest() == 99.0 and view.boot == "b2", what="the resent reading on the dashboard")

    with_gateway(tmp_path, body)
