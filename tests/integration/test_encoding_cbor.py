"""edgewire.v1.cbor against a real gateway process: negotiation, the same stored rows as JSON, bad
binary frames answered with their codes, and a simulated device sending CBOR (docs/protocol.md 1.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from protocol import cbor, wire
from simulator.device import VirtualDevice
from tests.edge.agentproc import AgentProcess, wait_for
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until

CBOR = Subprotocol(wire.SUBPROTOCOL_CBOR)
JSON = Subprotocol(wire.SUBPROTOCOL_JSON)
T0 = 1_764_080_000_000

# The same readings for both encodings: two metrics at 0.1, a gap, an integer metric, device time or
# uptime only, every quality, and an agent-style reading with both ts and up.
READINGS = [
    wire.Reading(1, {"temperature": 21.5, "humidity": 40.2}, ts=T0, quality="ok"),
    wire.Reading(2, {"temperature": 21.6, "humidity": 40.1}, ts=T0 + 60_004, quality="retried"),
    wire.Reading(3, {"temperature": -3.25}, ts=T0 + 120_001, quality="suspect"),
    wire.Reading(4, {"co2": 415, "temperature": 20.0}, ts=T0 + 180_000, up=7_200_000, quality="stale"),
    wire.Reading(5, {"soil_temperature": 17.125}, ts=T0 + 240_000),
    wire.Reading(6, {"humidity": 55.5, "battery": 87.0}, ts=T0 + 300_009, quality="ok"),
]


async def _open(gw: GatewayProcess, token: str, offer: list[Subprotocol] | None) -> ClientConnection:
    ws = await connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}, subprotocols=offer)
    assert json.loads(await ws.recv())["t"] == "welcome"
    return ws


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway that offers edgewire.v1.cbor (its setting cbor; off by default)."""
    with GatewayProcess(tmp_path, cbor=True) as gw:
        yield gw


def test_negotiation(gateway: GatewayProcess) -> None:
    token = gateway.register("NEG-1")

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for label, offer in (("both", [CBOR, JSON]), ("cbor", [CBOR]), ("json", [JSON]), ("none", None),
                             ("other", [Subprotocol("mqtt")])):
            ws = await _open(gateway, token, offer)
            seen[label] = ws.subprotocol
            await ws.close()
        async with connect(gateway.url + "/v1/dashboard", subprotocols=[CBOR]) as dash:
            seen["dashboard"] = dash.subprotocol
        return seen

    assert asyncio.run(run()) == {"both": CBOR, "cbor": CBOR, "json": JSON, "none": None, "other": None,
                                  "dashboard": None}


def test_by_default_the_gateway_speaks_json(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:  # cbor off
        token = gw.register("NEG-2")

        async def run() -> tuple[str | None, dict[str, Any]]:
            ws = await _open(gw, token, [CBOR, JSON])
            await ws.send(bytes(cbor.encode_data(1, READINGS[:1]) or b""))
            reply = json.loads(await ws.recv())
            await ws.close()
            return ws.subprotocol, reply

        chosen, reply = asyncio.run(run())
    assert chosen == JSON and reply["code"] == wire.E_BINARY


async def _send_all(ws: ClientConnection, frames: list[str | bytes], last_seq: int) -> None:
    for frame in frames:
        await ws.send(frame)
    while True:  # acks are cumulative: wait for the one that covers the last reading
        reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert reply["t"] == "ack", reply
        if reply["seq"] >= last_seq:
            return


def test_json_and_cbor_frames_store_the_same_rows(gateway: GatewayProcess) -> None:
    """The conformance check: the same readings, one device per encoding, compared row by row."""
    tokens = {name: gateway.register(name) for name in ("AS-JSON", "AS-CBOR")}

    async def run() -> None:
        as_json = await _open(gateway, tokens["AS-JSON"], None)
        as_cbor = await _open(gateway, tokens["AS-CBOR"], [CBOR])
        assert as_json.subprotocol is None and as_cbor.subprotocol == CBOR
        batches = [READINGS[:2], READINGS[2:5], READINGS[5:]]
        texts: list[str | bytes] = [json.dumps(wire.data_message(b[0].seq, b, "7f3a9c01", 9_000_000))
                                    for b in batches]
        binaries: list[str | bytes] = []
        for batch in batches:
            frame = cbor.encode_data(batch[0].seq, batch, "7f3a9c01", 9_000_000)
            assert frame is not None
            binaries.append(bytes(frame))
        await asyncio.gather(_send_all(as_json, texts, 6), _send_all(as_cbor, binaries, 6))
        await as_json.close()
        await as_cbor.close()

    asyncio.run(run())
    columns = "seq, time_ms, boot, device_ts, uptime_ms, quality, metrics"
    rows = {name: gateway.query(f"SELECT {columns} FROM readings WHERE device_id=? ORDER BY seq", (name,))
            for name in tokens}
    assert len(rows["AS-JSON"]) == len(READINGS)
    assert rows["AS-CBOR"] == rows["AS-JSON"]  # metrics compared as stored: the same JSON text
    assert json.loads(rows["AS-CBOR"][3][6]) == {"co2": 415, "temperature": 20.0}


def test_bad_binary_frames_get_their_codes_and_change_nothing(gateway: GatewayProcess) -> None:
    token = gateway.register("BAD-CBOR")
    bad = [
        (b"\xff\x00\x13", wire.E_BAD_CBOR, None),  # not CBOR
        (b"\xa1\x63seq\xfb\x40\x35\x80\x00\x00\x00\x00\x00", wire.E_BAD_CBOR, None),  # a float
        (cbor2.dumps({"t": "status", "heap_free": 1}), wire.E_BAD_FRAME, None),  # only data is binary
        (cbor2.dumps({"seq": 2, "m": {0: [1, 9990]}}), wire.E_BAD_VALUE, 2),  # 999.0 degrees
        (cbor2.dumps({"seq": 2, "m": {0: [1, 215, 1]}, "q": [1]}), wire.E_BAD_FRAME, 2),  # q of the wrong length
        (cbor2.dumps({"seq": 2, "m": {0: [1] + [0] * 101}}), wire.E_TOO_LARGE, 2),
    ]

    async def run() -> list[dict[str, Any]]:
        replies = []
        ws = await _open(gateway, token, [CBOR])
        await _send_all(ws, [bytes(cbor.encode_data(1, READINGS[:1]) or b"")], 1)
        for frame, _, _ in bad:
            await ws.send(frame)
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
        await ws.send(json.dumps(wire.data_message(2, [wire.Reading(2, {"temperature": 22.0})])))  # JSON text too
        replies.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
        await ws.close()
        return replies

    replies = asyncio.run(run())
    for (_, code, seq), reply in zip(bad, replies, strict=False):
        assert reply["t"] == "error" and reply["code"] == code and reply.get("seq") == seq, reply
    assert replies[-1] == {"t": "ack", "seq": 2}
    assert gateway.seqs("BAD-CBOR") == [1, 2]
    assert gateway.metrics()['edgewire_errors_total{code="bad_cbor"}'] == 2


def test_a_simulated_device_sends_cbor_end_to_end(gateway: GatewayProcess) -> None:
    token = gateway.register("SIM-CBOR")
    device = VirtualDevice(gateway.url, "SIM-CBOR", token, rate=20.0, batch=5, encoding="cbor", linger_s=0.2)

    async def run() -> None:
        task = asyncio.create_task(device.run())
        await until(lambda: device.counters.acked >= 40, 20, "40 readings acknowledged")
        device.stop_generating()
        await asyncio.wait_for(task, 20)

    asyncio.run(run())
    assert device.counters.acked == device.counters.generated >= 40
    assert gateway.seqs("SIM-CBOR") == list(range(1, device.counters.generated + 1))
    online = [json.loads(line) for line in gateway.log_text().splitlines() if '"device_online"' in line]
    assert any(entry.get("device") == "SIM-CBOR" and entry.get("encoding") == "cbor" for entry in online), online


def test_the_pi_agent_sends_cbor_end_to_end(gateway: GatewayProcess, tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "agent", gateway.device_url, gateway.register("PI-CBOR"), device_id="PI-CBOR")
    try:
        agent.start()
        wait_for(lambda: len(gateway.seqs("PI-CBOR")) >= 8, 60, "8 readings at the gateway")
        assert agent.stop() == 0
    finally:
        agent.kill()
    seqs = gateway.seqs("PI-CBOR")
    assert seqs == list(range(1, len(seqs) + 1))
    rows = gateway.query("SELECT device_ts, uptime_ms, metrics FROM readings WHERE device_id='PI-CBOR'")
    assert all(up is not None and json.loads(metrics) for _, up, metrics in rows)
    online = [json.loads(line) for line in gateway.log_text().splitlines() if '"device_online"' in line]
    assert online and all(entry["encoding"] == "cbor" for entry in online), online
