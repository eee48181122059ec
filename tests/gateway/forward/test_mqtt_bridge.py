"""The MQTT bridge against a real Mosquitto: state, availability, Home Assistant discovery, deletion, alerts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from gateway.forward.discovery import object_id
from gateway.forward.forwarder import Forwarder
from gateway.forward.mqtt import AlertNotice, MqttBridge
from gateway.forward.mqtt_sink import MqttSink
from gateway.storage.base import DeviceRecord, ReadingRow
from gateway.storage.sqlite import SQLiteStorage
from protocol import wire
from services.mosquitto import MosquittoServer, make_test_certificates
from tests.gateway.forward import ha_schema
from tests.gateway.forward.conftest import Observer, make_bridge, reading, retained, until


def CONFIG_OF(device: str, metric: str) -> str:
    return f"homeassistant/sensor/edgewire/{metric}-{object_id(device)}/config"


@asynccontextmanager
async def running(tmp_path: Path, url: str, devices: tuple[str, ...] = ("S-1",), db: str = "b.db",
                  **kw: Any) -> AsyncIterator[tuple[SQLiteStorage, MqttBridge, Forwarder]]:
    """Storage with registered devices, a bridge and its forwarder, running; stopped cleanly after."""
    storage = SQLiteStorage(tmp_path / db, commit_interval_ms=0)
    await storage.open()
    for device_id in devices:
        await storage.put_device(DeviceRecord(device_id, True, None, [], f"Room {device_id}", 1, 1))
    bridge = make_bridge(url, storage, **kw)
    forwarder = Forwarder(MqttSink(bridge.link, bridge.topics), storage, "gw1", window=100, save_s=0.05)
    await bridge.start()
    task = asyncio.create_task(forwarder.run())
    try:
        await until(lambda: bridge.ready and forwarder.cursor is not None, what="bridge connected")
        yield storage, bridge, forwarder
    finally:
        await forwarder.close()
        await task
        await bridge.stop()
        await storage.close()


async def ingest(storage: SQLiteStorage, bridge: MqttBridge, forwarder: Forwarder, rows: list[ReadingRow]) -> None:
    """What the gateway does with received readings: store them, show them to the bridge, wake the forwarder."""
    await storage.store(rows)
    for row in rows:
        bridge.saw_reading(row.device_id, row.metrics)
    forwarder.wake()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def check_sensor_config(config: dict[str, Any], device: str, metric: str) -> None:
    """Only documented keys, with values Home Assistant accepts, all taken from the metric table."""
    assert set(config) <= ha_schema.SENSOR_KEYS, set(config) - ha_schema.SENSOR_KEYS
    assert set(config["device"]) <= ha_schema.DEVICE_KEYS
    assert set(config["origin"]) <= ha_schema.ORIGIN_KEYS
    for item in config["availability"]:
        assert set(item) <= ha_schema.AVAILABILITY_KEYS
    unit, _low, _high, device_class, label = wire.METRICS[metric]
    assert config["name"] == label
    assert config["device_class"] == device_class and config["unit_of_measurement"] == unit
    assert unit in ha_schema.SENSOR_DEVICE_CLASS_UNITS[device_class]
    assert config["state_class"] == "measurement" and config["state_class"] in ha_schema.STATE_CLASSES
    assert config["availability_mode"] in ha_schema.AVAILABILITY_MODES
    assert config["unique_id"] == f"edgewire:{device}:{metric}"
    assert config["state_topic"] == f"edgewire/{device}/state"
    assert [a["topic"] for a in config["availability"]] == [f"edgewire/{device}/availability",
                                                             "edgewire/bridge/gw1/status"]
    assert config["device"]["identifiers"] == [f"edgewire:{device}"]
    assert config["device"]["via_device"] == "edgewire-gateway:gw1"
    assert config["device"]["manufacturer"] == "Edgewire"


def test_metric_table_fits_home_assistant() -> None:
    """Every metric's device_class is one Home Assistant knows, with a unit it accepts for it."""
    for name, (unit, low, high, device_class, label) in wire.METRICS.items():
        assert low < high and label, name
        if device_class is not None:
            assert unit in ha_schema.SENSOR_DEVICE_CLASS_UNITS[device_class], (name, unit)


def test_state_discovery_and_availability(tmp_path: Path, broker: MosquittoServer) -> None:
    async def body() -> None:
        observer = Observer(broker.port)
        try:
            async with running(tmp_path, broker.url) as (storage, bridge, forwarder):
                bridge.device_online("S-1")
                await ingest(storage, bridge, forwarder, [reading("S-1", 1), reading("S-1", 2)])
                await until(lambda: len(observer.of("edgewire/S-1/state")) == 2, what="state")
                states = [orjson.loads(p) for p in observer.of("edgewire/S-1/state")]
                assert [(s["device"], s["seq"]) for s in states] == [("S-1", 1), ("S-1", 2)]
                assert states[1] == {"device": "S-1", "seq": 2, "ts": reading("S-1", 2).time_ms,
                                     "received": reading("S-1", 2).received_ms, "quality": "ok",
                                     "metrics": {"temperature": 22.0, "humidity": 40.0}}
                await until(lambda: observer.last("edgewire/S-1/availability") == b"online", what="online")
                assert observer.last("edgewire/bridge/gw1/status") == b"online"
                for metric in ("temperature", "humidity"):
                    await until(lambda m=metric: observer.json(CONFIG_OF("S-1", m)), what=metric)
                    config = observer.json(CONFIG_OF("S-1", metric))
                    check_sensor_config(config, "S-1", metric)
                    assert config["device"]["name"] == "Room S-1"
                    assert config["device"]["model"] == "Edgewire device"  # no status yet
                gateway = observer.json("homeassistant/binary_sensor/edgewire/gateway_gw1/config")
                assert set(gateway) <= ha_schema.BINARY_SENSOR_KEYS
                assert gateway["device_class"] in ha_schema.BINARY_SENSOR_DEVICE_CLASSES
                assert gateway["entity_category"] in ha_schema.ENTITY_CATEGORIES
                assert gateway["device"]["identifiers"] == ["edgewire-gateway:gw1"]
                assert gateway["state_topic"] == "edgewire/bridge/gw1/status"
                # The status frame names the model and the firmware: the configs follow.
                bridge.device_status("S-1", {"kind": "esp32", "fw": "0.1.0", "heap_free": 1})
                await until(lambda: (observer.json(CONFIG_OF("S-1", "temperature")) or {})
                            .get("device", {}).get("model") == "Edgewire ESP32 node", what="model")
                assert observer.json(CONFIG_OF("S-1", "humidity"))["device"]["sw_version"] == "0.1.0"
                # A new metric gets its entity when first seen.
                await ingest(storage, bridge, forwarder, [reading("S-1", 3, temperature=20.0, rssi=-60.0)])
                await until(lambda: observer.json(CONFIG_OF("S-1", "rssi")), what="rssi config")
                check_sensor_config(observer.json(CONFIG_OF("S-1", "rssi")), "S-1", "rssi")
                # The device goes away: its availability flips.
                bridge.device_offline("S-1")
                await until(lambda: observer.last("edgewire/S-1/availability") == b"offline", what="offline")
                # Alerts are published as events.
                bridge.alert_event(AlertNotice("raised", {"id": 7, "device": "S-1", "metric": "temperature",
                                                          "state": "active", "value": 31.0}, 1234))
                await until(lambda: observer.json("edgewire/S-1/alert"), what="alert")
                assert observer.json("edgewire/S-1/alert") == {
                    "event": "raised", "at": 1234,
                    "alert": {"id": 7, "device": "S-1", "metric": "temperature", "state": "active", "value": 31.0}}
            # A clean stop says offline (not the last will, which needs a lost connection).
            await until(lambda: observer.last("edgewire/bridge/gw1/status") == b"offline", what="bridge offline")
        finally:
            observer.close()

    run(body)


def test_home_assistant_restart_keeps_entities_available(tmp_path: Path, broker: MosquittoServer) -> None:
    """Home Assistant restarts: it finds the configs, availability and bridge status retained, and
    announces itself (birth): every config is published again."""

    async def body() -> None:
        async with running(tmp_path, broker.url, devices=("S-1", "S-2")) as (storage, bridge, forwarder):
            bridge.device_online("S-1")
            bridge.device_online("S-2")
            await ingest(storage, bridge, forwarder, [reading("S-1", 1), reading("S-2", 1)])
            first = Observer(broker.port)
            await until(lambda: len(first.matching(lambda t: t.endswith("/config"))) >= 5
                        and first.of("edgewire/S-1/state") and first.of("edgewire/S-2/state"), what="configs, states")
            first.close()
            # A restarted Home Assistant subscribes afresh: what it needs is retained.
            ha = Observer(broker.port, topics=("homeassistant/#", "edgewire/#"))
            await until(lambda: ha.last("edgewire/S-2/availability") == b"online", what="retained availability")
            assert ha.last("edgewire/S-1/availability") == b"online"
            assert ha.last("edgewire/bridge/gw1/status") == b"online"
            assert orjson.loads(ha.last("edgewire/S-1/state") or b"{}")["seq"] == 1
            retained = {t for t, _, r in ha.messages if r and t.endswith("/config")}
            assert CONFIG_OF("S-1", "temperature") in retained and CONFIG_OF("S-2", "humidity") in retained
            before = len(ha.of(CONFIG_OF("S-1", "temperature")))
            births = bridge.ha_births
            ha.publish("homeassistant/status", b"online")
            await until(lambda: len(ha.of(CONFIG_OF("S-2", "humidity"))) >= 2, what="configs again")
            assert len(ha.of(CONFIG_OF("S-1", "temperature"))) > before and bridge.ha_births == births + 1
            # Availability too, so entities are available at once.
            await until(lambda: len(ha.of("edgewire/S-1/availability")) >= 2, what="availability again")
            ha.publish("homeassistant/status", b"offline")  # HA's last will: nothing to do
            ha.close()

    run(body)


def test_broker_restart_sends_availability_and_configs_again(tmp_path: Path) -> None:
    """A broker restarted without persistence forgot every retained message: after the reconnect the
    bridge publishes its status, every config and every device's availability again."""

    async def body() -> None:
        with MosquittoServer() as broker:
            async with running(tmp_path, broker.url, devices=("S-1", "S-2")) as (storage, bridge, forwarder):
                bridge.device_online("S-1")
                await ingest(storage, bridge, forwarder, [reading("S-1", 1), reading("S-2", 1)])
                watch = Observer(broker.port)
                await until(lambda: watch.last("edgewire/S-2/availability") == b"offline", what="S-2 offline")
                watch.close()
                connects = bridge.link.connects
                await asyncio.to_thread(broker.restart)
                await until(lambda: bridge.link.connects > connects and bridge.ready, what="reconnected")
                fresh = Observer(broker.port, topics=("homeassistant/#", "edgewire/#"))
                await until(lambda: fresh.last("edgewire/S-1/availability") == b"online"
                            and fresh.last("edgewire/S-2/availability") == b"offline"
                            and fresh.last("edgewire/bridge/gw1/status") == b"online"
                            and fresh.json(CONFIG_OF("S-2", "humidity")) is not None, what="re-sent")
                fresh.close()

    run(body)


def test_a_deleted_device_loses_its_entities(tmp_path: Path, broker: MosquittoServer) -> None:
    async def body() -> None:
        async with running(tmp_path, broker.url, devices=("S-1", "dev.2")) as (storage, bridge, forwarder):
            bridge.device_online("dev.2")
            await ingest(storage, bridge, forwarder, [reading("S-1", 1), reading("dev.2", 1)])
            watch = Observer(broker.port)
            topic = CONFIG_OF("dev.2", "temperature")
            await until(lambda: watch.json(topic), what="config of dev.2")
            assert topic.startswith("homeassistant/sensor/edgewire/temperature-dev_2_") and object_id("S-1") == "S-1"
            assert await storage.delete_device("dev.2")
            await bridge._refresh_registry()  # the periodic registry check
            await until(lambda: watch.last(topic) == b"" and watch.last("edgewire/dev.2/availability") == b""
                        and watch.last("edgewire/dev.2/state") == b"", what="cleared")
            watch.close()
        # Deleted while the gateway was down: its retained configs are found and cleared at the next start.
        storage = SQLiteStorage(tmp_path / "b.db")
        await storage.open()
        assert await storage.delete_device("S-1")
        await storage.close()
        assert CONFIG_OF("S-1", "humidity") in await asyncio.to_thread(retained, broker.port)
        async with running(tmp_path, broker.url, devices=()) as (_storage, bridge, _forwarder):
            # 2 configs, state, availability
            await until(lambda: bridge.control.published["removal"] >= 4, what="removals acked")
            left = await asyncio.to_thread(retained, broker.port)
            assert not [t for t in left if t.startswith("homeassistant/sensor/") or t.startswith("edgewire/S-1/")]

    run(body)


def test_commands_round_trip_and_bad_payloads_leave_the_device_alone(tmp_path: Path,
                                                                      broker: MosquittoServer) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    async def run_command(device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        calls.append((device_id, name, args))
        if device_id == "S-9":
            from gateway.errors import RegistryError

            raise RegistryError("device 'S-9' is not online")
        return {"t": "result", "id": "c-1", "ok": True, "msg": f"interval {args.get('seconds')} s", "data": {}}

    async def body() -> None:
        watch = Observer(broker.port, topics=("edgewire/+/command/+/result",))
        # Left retained on the broker: it would run at every reconnect of the bridge, so it never runs.
        watch.publish("edgewire/S-1/command/reboot", b"{}", retain=True)
        async with running(tmp_path, broker.url, run_command=run_command, commands=True) as (_s, bridge, _f):
            result = "edgewire/S-1/command/{}/result"
            await until(lambda: watch.of(result.format("reboot")), what="retained command refused")
            assert orjson.loads(watch.of(result.format("reboot"))[0])["code"] == "retained_command"

            async def ask(name: str, payload: bytes, retain: bool = False, device: str = "S-1") -> Any:
                topic = f"edgewire/{device}/command/{name}/result"
                before = len(watch.of(topic))
                watch.publish(f"edgewire/{device}/command/{name}", payload, retain=retain)
                await until(lambda: len(watch.of(topic)) > before, what=f"result of {name}")
                return orjson.loads(watch.of(topic)[-1])

            assert await ask("set_interval", b'{"seconds": 30}') == {"ok": True, "msg": "interval 30 s", "data": {}}
            assert calls == [("S-1", "set_interval", {"seconds": 30})]
            assert (await ask("ping", b"{}"))["ok"] is True
            refusals = [("reboot", b"", "bad_json"),  # what clearing a retained command delivers: never run
                        ("set_interval", b"{seconds: 30}", "bad_json"), ("set_interval", b"[30]", "bad_frame"),
                        ("set_interval", b'{"seconds": 0}', "bad_value"), ("set_interval", b"{}", "bad_value"),
                        ("launch", b"{}", "unknown_type"), ("set_output", b'{"output": "led", "on": "yes"}',
                                                            "bad_value"),
                        ("ping", b"x" * 5000, "too_large")]
            for name, payload, code in refusals:
                answer = await ask(name, payload)
                assert answer["ok"] is False and answer["code"] == code, (name, payload, answer)
                assert answer["msg"]
            assert len(calls) == 2  # none of the refused ones reached the device
            offline = await ask("ping", b"{}", device="S-9")
            assert offline == {"ok": False, "code": "device_offline", "msg": "device 'S-9' is not online"}
            assert bridge.gate is not None and bridge.gate.counts["ok"] == 2
            assert result.format("ping") in {t for t, _, _ in watch.messages}
            watch.publish("edgewire/S-1/command/reboot", b"", retain=True)  # clear the retained command
            await until(lambda: len(watch.of(result.format("reboot"))) == 3, what="the clearing refused")
            assert [name for _, name, _ in calls] == ["set_interval", "ping", "ping"]  # the last one to S-9
            watch.close()

    run(body)


def test_commands_are_ignored_unless_switched_on(tmp_path: Path, broker: MosquittoServer) -> None:
    called: list[str] = []

    async def run_command(device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        called.append(name)
        return {"ok": True}

    async def body() -> None:
        async with running(tmp_path, broker.url, run_command=run_command) as (_s, bridge, _f):
            assert bridge.gate is None
            watch = Observer(broker.port, topics=("edgewire/#",))
            watch.publish("edgewire/S-1/command/ping", b"{}")
            # The bridge's own status message, published after the command, comes back: the command was seen
            # by the broker before it, and nothing answered it.
            bridge.device_online("S-1")
            await until(lambda: watch.last("edgewire/S-1/availability") == b"online", what="availability")
            assert not [t for t, _, _ in watch.messages if t.endswith("/result")] and called == []
            watch.close()

    run(body)


def test_acl_refusals_are_counted_not_lost_silently(tmp_path: Path) -> None:
    """MQTT 5 PUBACK reason codes: a state message the broker's ACL refuses is counted as refused."""
    acl = "user edgewire\ntopic readwrite edgewire/bridge/#\ntopic readwrite edgewire/+/availability\n" \
          "topic readwrite homeassistant/#\n"

    async def body() -> None:
        with MosquittoServer(users={"edgewire": "pw-1"}, acl=acl) as broker:
            async with running(tmp_path, broker.url, username="edgewire", password="pw-1") as (storage, bridge, fw):
                await ingest(storage, bridge, fw, [reading("S-1", 1)])
                await until(lambda: fw.counters.refused == 1, what="refused")
                assert fw.counters.acked == 0
                await until(lambda: bridge.control.published["config"] >= 2, what="configs (allowed)")
                assert bridge.control.refused == {}

    run(body)


def test_tls_with_a_user_name_and_password(tmp_path: Path) -> None:
    files = make_test_certificates(tmp_path / "tls")

    async def body() -> None:
        with MosquittoServer(users={"edgewire": "pw-2", "watcher": "pw-3"}, tls=files) as broker:
            watch = Observer(broker.port, username="watcher", password="pw-3")
            async with running(tmp_path, broker.tls_url, username="edgewire", password="pw-2",
                               ca_file=str(files.ca)) as (storage, bridge, forwarder):
                assert bridge.settings.url.tls and bridge.link.client_id == "edgewire-test"
                await ingest(storage, bridge, forwarder, [reading("S-1", 1)])
                await until(lambda: watch.json("edgewire/S-1/state"), what="state over TLS")
                assert watch.json("edgewire/S-1/state")["seq"] == 1
            watch.close()

    run(body)


def documented_acl() -> str:
    """The ACL file docs/mqtt.md tells operators to use, as written there."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "mqtt.md").read_text()
    section = text[text.index("## Broker ACLs"):]
    return section.split("```", 2)[1].strip("\n") + "\n"


def test_the_documented_acls_are_enough_and_refuse_the_rest(tmp_path: Path) -> None:
    calls: list[str] = []

    async def run_command(device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        calls.append(name)
        return {"ok": True, "msg": "pong", "data": {}}

    async def body() -> None:
        users = {"edgewire": "pw-g", "homeassistant": "pw-h", "operator": "pw-o", "stranger": "pw-s"}
        with MosquittoServer(users=users, acl=documented_acl()) as broker:
            ha = Observer(broker.port, topics=("edgewire/#", "homeassistant/#"), username="homeassistant",
                          password="pw-h")
            operator = Observer(broker.port, topics=("edgewire/+/command/+/result",), username="operator",
                                password="pw-o")
            async with running(tmp_path, broker.url, username="edgewire", password="pw-g", run_command=run_command,
                               commands=True, devices=("S-1", "S-2")) as (storage, bridge, forwarder):
                bridge.device_online("S-1")
                await ingest(storage, bridge, forwarder, [reading("S-1", 1), reading("S-2", 1)])
                bridge.alert_event(AlertNotice("raised", {"id": 1, "device": "S-1", "metric": "temperature"}, 5))
                await until(lambda: ha.json("edgewire/S-1/state") and ha.json(CONFIG_OF("S-2", "humidity"))
                            and ha.last("edgewire/S-1/availability") == b"online" and ha.json("edgewire/S-1/alert")
                            and ha.last("edgewire/bridge/gw1/status") == b"online", what="seen by Home Assistant")
                operator.publish("edgewire/S-1/command/ping", b"{}")
                await until(lambda: operator.json("edgewire/S-1/command/ping/result"), what="command result")
                assert operator.json("edgewire/S-1/command/ping/result")["ok"] is True and calls == ["ping"]
                # Home Assistant's controls publish commands too (its ping button, here).
                ha.publish("edgewire/S-1/command/ping", b"{}")
                await until(lambda: len(operator.of("edgewire/S-1/command/ping/result")) == 2, what="HA's ping")
                # A stranger cannot command devices (refused by the broker, which also disconnects a 3.1.1
                # client for it: a separate client, not the watching one).
                intruder = Observer(broker.port, topics=("edgewire/+/command/+/result",), username="stranger",
                                    password="pw-s")
                intruder.publish("edgewire/S-2/command/ping", b"{}")
                intruder.close()
                await storage.delete_device("S-2")
                await bridge._refresh_registry()
                await until(lambda: ha.last(CONFIG_OF("S-2", "humidity")) == b"", what="removal allowed")
                operator.publish("edgewire/S-1/command/ping", b"{}")  # after the refused one: it was not run
                await until(lambda: len(operator.of("edgewire/S-1/command/ping/result")) == 3, what="third")
                assert calls == ["ping", "ping", "ping"]
                assert bridge.control.refused == {} and forwarder.counters.refused == 0
                assert ha.connects == 1
            ha.close()
            operator.close()

    run(body)
