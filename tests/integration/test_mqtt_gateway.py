"""The gateway with ``--mqtt``, a real Mosquitto and real device connections (docs/mqtt.md).

- A device connects, reports its kind and firmware, sends readings: Home Assistant sees its
  entities, state and availability; it disconnects: availability flips to offline.
- Commands over MQTT take the admin path to the device and answer on the result topic; a bad
  payload gets an error and the device receives nothing.
- SIGKILL while forwarding (worker process and in-process): after the restart every stored
  reading reaches the subscriber, none skipped, duplicates at most the forwarding window; the
  bridge's last will says ``offline`` meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from services.mosquitto import MosquittoServer
from simulator.fleet import Fleet
from tests.gateway.forward.conftest import Observer, until
from tests.helpers.gateway import GatewayProcess

WINDOW = 200


async def device(gw: GatewayProcess, token: str) -> ClientConnection:
    ws = await connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"})
    welcome = json.loads(await ws.recv())
    assert welcome["t"] == "welcome", welcome
    return ws


def test_home_assistant_view_and_commands(tmp_path: Path) -> None:
    with MosquittoServer() as broker:
        rain = {"name": "rain", "unit": "mm", "low": 0, "high": 500, "device_class": "precipitation",
                "state_class": "total_increasing", "label": "Rain"}
        gw = GatewayProcess(tmp_path, mqtt_url=broker.url, mqtt_commands=True, instance_id="gw1",
                            alerts=[{"id": "hot", "metric": "temperature", "above": 30, "hysteresis": 1}],
                            metrics=[rain])
        token = gw.register("SENSOR-01", "--label", "Greenhouse")
        watch = Observer(broker.port)
        config_topic = "homeassistant/sensor/edgewire/temperature-SENSOR-01/config"

        async def run() -> None:
            ws = await device(gw, token)
            try:
                await until(lambda: watch.last("edgewire/SENSOR-01/availability") == b"online", what="online")
                await ws.send(json.dumps({"t": "status", "fw": "0.1.0", "kind": "pi"}))
                await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 21.5, "humidity": 40}}]}))
                assert json.loads(await ws.recv())["t"] == "ack"
                await until(lambda: watch.json("edgewire/SENSOR-01/state"), what="state")
                assert watch.json("edgewire/SENSOR-01/state")["metrics"] == {"temperature": 21.5, "humidity": 40}
                await until(lambda: (watch.json(config_topic) or {}).get("device", {}).get("model")
                            == "Edgewire Pi agent", what="config with the model")
                config = watch.json(config_topic)
                assert config["device"]["name"] == "Greenhouse (SENSOR-01)"  # the label and the id
                assert config["device"]["sw_version"] == "0.1.0"
                # A metric declared in the configuration ([[metrics]]) is first-class: checked against its range,
                # with its unit on the dashboard's /v1/meta and in Home Assistant.
                await ws.send(json.dumps({"t": "data", "seq": 2, "r": [{"m": {"rain": 900}}]}))
                refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert (refused["t"], refused["code"]) == ("error", "bad_value") and "0.0..500.0" in refused["msg"]
                await ws.send(json.dumps({"t": "data", "seq": 2, "r": [{"m": {"rain": 12.5}}]}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["t"] == "ack"
                rain_topic = "homeassistant/sensor/edgewire/rain-SENSOR-01/config"
                await until(lambda: watch.json(rain_topic), what="the rain sensor")
                rain_config = watch.json(rain_topic)
                assert (rain_config["unit_of_measurement"], rain_config["device_class"], rain_config["state_class"],
                        rain_config["name"]) == ("mm", "precipitation", "total_increasing", "Rain")
                with urllib.request.urlopen(gw.http_url + "/v1/meta", timeout=10) as resp:
                    assert json.load(resp)["metrics"]["rain"]["unit"] == "mm"
                assert watch.last("edgewire/bridge/gw1/status") == b"online"
                # A command over MQTT reaches the device through the admin path; its answer comes back.
                watch.publish("edgewire/SENSOR-01/command/set_interval", b'{"seconds": 30}')
                cmd = json.loads(await asyncio.wait_for(ws.recv(), 15))
                assert (cmd["t"], cmd["name"], cmd["args"]) == ("cmd", "set_interval", {"seconds": 30})
                await ws.send(json.dumps({"t": "result", "id": cmd["id"], "ok": True, "msg": "interval 30 s"}))
                result = "edgewire/SENSOR-01/command/set_interval/result"
                await until(lambda: watch.json(result), what="result")
                assert watch.json(result) == {"ok": True, "msg": "interval 30 s", "data": {}}
                # A bad payload: an error result, and nothing for the device.
                watch.publish("edgewire/SENSOR-01/command/set_interval", b'{"seconds": -1}')
                await until(lambda: len(watch.of(result)) == 2, what="error result")
                assert watch.json(result)["code"] == "bad_value"
                await ws.send(json.dumps({"t": "data", "seq": 3, "r": [{"m": {"temperature": 21.6}}]}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["t"] == "ack"  # not a cmd frame
                # The alert engine's events reach MQTT.
                await ws.send(json.dumps({"t": "data", "seq": 4, "r": [{"m": {"temperature": 31.0}}]}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["t"] == "ack"
                await until(lambda: watch.json("edgewire/SENSOR-01/alert"), what="alert event")
                event = watch.json("edgewire/SENSOR-01/alert")
                assert event["event"] == "raised" and event["alert"]["device"] == "SENSOR-01"
                assert event["alert"]["metric"] == "temperature" and event["alert"]["value"] == 31.0
                metrics = gw.metrics()
                assert metrics['edgewire_mqtt_commands_total{outcome="ok"}'] == 1
                assert metrics['edgewire_mqtt_commands_total{outcome="bad_value"}'] == 1
            finally:
                await ws.close()
            await until(lambda: watch.last("edgewire/SENSOR-01/availability") == b"offline", what="offline")

        try:
            with gw:
                asyncio.run(run())
                health = json.loads(gw.cli("forward", "status", "--json").stdout)
                assert [c["sink"] for c in health] == ["mqtt"]
                assert gw.stop() == 0  # a clean stop: the worker and the forwarders end without a failure
            assert "task_failed" not in gw.log_text() and "forward_worker_exited" not in gw.log_text()
            # ... and the bridge says offline (no last will needed).
            assert watch.last("edgewire/bridge/gw1/status") == b"offline"
        finally:
            watch.close()


@pytest.mark.parametrize("worker", [True, False], ids=["worker", "in_process"])
def test_sigkill_while_forwarding_skips_nothing(tmp_path: Path, worker: bool) -> None:
    with MosquittoServer(persistence=True) as broker:
        gw = GatewayProcess(tmp_path, mqtt_url=broker.url, instance_id="gw1", forward_window=WINDOW,
                            forward_process=worker, mqtt_discovery=False)
        watch = Observer(broker.port, topics=("edgewire/+/state", "edgewire/bridge/+/status"))

        def received() -> list[tuple[str, int]]:
            return [(m["device"], m["seq"]) for m in (orjson.loads(p) for _, p, _ in
                                                      watch.matching(lambda t: t.endswith("/state")))]

        async def run(creds: dict[str, str]) -> None:
            loop = asyncio.get_running_loop()
            async with Fleet(gw.url, creds, rate=20.0, batch=1, seed=5, backoff_initial_s=0.2,
                             backoff_max_s=1.0) as fleet:
                fleet.start()
                await until(lambda: len(received()) >= 200, what="forwarding")
                await loop.run_in_executor(None, gw.kill)
                await until(lambda: watch.last("edgewire/bridge/gw1/status") == b"offline", what="last will")
                await loop.run_in_executor(None, gw.start)
                await until(lambda: all(d.online for d in fleet.devices), what="devices back")
                before = len(received())
                await until(lambda: len(received()) >= before + 200, what="forwarding again")
            # A session ends after its last frames are stored: once none is left, the rows are final.
            await until(lambda: gw.metrics()["edgewire_devices_online"] == 0, what="every session ended")
            # Every reading stored, from before the kill to the end, has been published.
            stored = set(gw.query("SELECT device_id, seq FROM readings"))
            await until(lambda: stored <= set(received()), timeout=60, what="every stored reading published")

        try:
            with gw:
                creds = gw.register_many([f"kill-{i}" for i in range(5)])
                asyncio.run(run(creds))
            got = received()
            stored = gw.query("SELECT device_id, seq FROM readings")
            assert set(got) >= set(stored)
            duplicates = len(got) - len(set(got))
            mode = "worker" if worker else "in process"
            print(f"sigkill ({mode}): stored {len(stored)}, published {len(got)}, duplicates {duplicates}")
            assert duplicates <= WINDOW, duplicates
            for device_id in {d for d, _ in stored}:
                firsts: list[int] = []
                for d, seq in got:
                    if d == device_id and seq not in firsts:
                        firsts.append(seq)
                assert firsts == sorted(firsts), device_id
        finally:
            watch.close()
