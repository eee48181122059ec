"""Issue 23 item 5: ``devices remove`` decommissions a device on a running gateway with a real Mosquitto:
its Home Assistant discovery configs (every entity: sensors, problem, diagnostics, controls) and its
retained topics are empty on the broker, its session ends, another device keeps its entities, and its
readings stay (until retention)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from services.mosquitto import MosquittoServer
from tests.gateway.forward.conftest import Observer, retained, until
from tests.helpers.gateway import GatewayProcess


async def device(gw: GatewayProcess, token: str, seq: int) -> ClientConnection:
    ws = await connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"})
    assert json.loads(await ws.recv())["t"] == "welcome"
    await ws.send(json.dumps({"t": "status", "fw": "0.1.0", "kind": "pi", "rssi": -60, "outputs": {"led": True}}))
    await ws.send(json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 21.5, "humidity": 40}}]}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["t"] == "ack"
    return ws


def ours(topics: dict[str, bytes], device_id: str) -> dict[str, bytes]:
    """The retained topics of ``device_id``: its discovery configs and its P/<device>/... topics."""
    return {t: p for t, p in topics.items()
            if (t.startswith("homeassistant/") and t.endswith(f"-{device_id}/config")) or
            t.startswith(f"edgewire/{device_id}/")}


@pytest.mark.parametrize("workers", [1, 2])
def test_remove_clears_home_assistant_discovery_and_keeps_history(tmp_path: Path, workers: int) -> None:
    with MosquittoServer() as broker:
        gw = GatewayProcess(tmp_path, mqtt_url=broker.url, mqtt_commands=True, instance_id="gw1", workers=workers)
        # an entity an earlier run of the gateway published (an output the device no longer reports)
        earlier = "homeassistant/switch/edgewire/output-fan-OLD-01/config"
        first = Observer(broker.port)
        first.publish(earlier, json.dumps({"name": "fan", "unique_id": "edgewire:OLD-01:output-fan"}).encode(),
                      retain=True)
        first.close()
        tokens = {d: gw.register(d) for d in ("OLD-01", "KEEP-01")}
        with gw:
            watch = Observer(broker.port)

            async def run() -> None:
                old = await device(gw, tokens["OLD-01"], 1)
                keep = await device(gw, tokens["KEEP-01"], 1)
                expected = {f"homeassistant/{kind}/edgewire/{key}-OLD-01/config" for kind, key in (
                    ("sensor", "temperature"), ("sensor", "humidity"), ("binary_sensor", "problem-alerts"),
                    ("sensor", "diag-rssi"), ("sensor", "diag-fw"), ("button", "button-reboot"),
                    ("switch", "output-led"))}
                await until(lambda: all(watch.json(t) for t in expected) and watch.json("edgewire/OLD-01/state")
                            and watch.json("homeassistant/sensor/edgewire/temperature-KEEP-01/config"),
                            what="the entities of both devices")
                before = ours(await asyncio.to_thread(retained, broker.port), "OLD-01")
                assert expected | {earlier} <= set(before) and "edgewire/OLD-01/availability" in before

                removed = await asyncio.to_thread(gw.cli, "devices", "remove", "OLD-01")
                assert removed.returncode == 0, removed.stderr
                assert "kept until retention" in removed.stderr and "Home Assistant" in removed.stderr
                # its session ends at once (the registry no longer knows it)
                await asyncio.wait_for(old.wait_closed(), 15)
                assert old.close_code == 4001

                async def cleared() -> bool:
                    return not ours(await asyncio.to_thread(retained, broker.port), "OLD-01")

                deadline = asyncio.get_running_loop().time() + 15
                while not await cleared():
                    assert asyncio.get_running_loop().time() < deadline, ours(
                        await asyncio.to_thread(retained, broker.port), "OLD-01")
                    await asyncio.sleep(0.05)
                # every one of its topics got an empty retained message (Home Assistant drops the entity)
                assert all(watch.last(t) == b"" for t in before), {t: watch.last(t) for t in before}
                left = await asyncio.to_thread(retained, broker.port)
                assert "homeassistant/sensor/edgewire/temperature-KEEP-01/config" in left
                assert left.get("edgewire/KEEP-01/availability") == b"online"
                # Home Assistant announcing itself again brings nothing of it back
                watch.publish("homeassistant/status", b"online")
                await keep.send(json.dumps({"t": "data", "seq": 2, "r": [{"m": {"temperature": 21.6}}]}))
                assert json.loads(await asyncio.wait_for(keep.recv(), 10))["t"] == "ack"
                await until(lambda: json.loads(watch.last("edgewire/KEEP-01/state") or b"{}").get("seq") == 2,
                            what="the other device forwarded")
                assert not ours(await asyncio.to_thread(retained, broker.port), "OLD-01")
                await keep.close()

            try:
                asyncio.run(run())
            finally:
                watch.close()
            # its history stays until retention; the registry no longer has it
            assert gw.seqs("OLD-01") == [1]
            assert [d["device_id"] for d in json.loads(gw.cli("devices", "list", "--json").stdout)] == ["KEEP-01"]
            again = gw.cli("devices", "remove", "OLD-01", check=False)
            assert again.returncode == 2 and again.stderr.startswith("error: ") and "OLD-01" in again.stderr


def test_remove_without_a_running_gateway_is_cleared_at_its_next_start(tmp_path: Path) -> None:
    with MosquittoServer() as broker:
        gw = GatewayProcess(tmp_path, mqtt_url=broker.url, instance_id="gw1", workers=1)
        token = gw.register("OLD-02")

        async def flow() -> None:
            ws = await device(gw, token, 1)
            await ws.close()

        with gw:
            asyncio.run(flow())
            watch = Observer(broker.port)
            try:
                asyncio.run(until(lambda: watch.json("homeassistant/sensor/edgewire/temperature-OLD-02/config"),
                                  what="config"))
            finally:
                watch.close()
        removed = gw.cli("devices", "delete", "OLD-02")  # the old name of the action
        assert removed.returncode == 0 and "no gateway is running" in removed.stderr, removed.stderr
        assert ours(retained(broker.port), "OLD-02")  # nobody cleared it yet
        with gw:
            async def wait() -> None:
                deadline = asyncio.get_running_loop().time() + 15
                while ours(await asyncio.to_thread(retained, broker.port), "OLD-02"):
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.05)

            asyncio.run(wait())
