"""Home Assistant device names, controls and diagnostics against a real Mosquitto (issue 20 items 12, 13).

Each control is driven the way Home Assistant drives it: its command template rendered with the
value Home Assistant passes, published on its command topic; the command goes through the bridge's
one command path (gateway/forward/mqtt_commands.py) to ``run_command`` (the admin API's path in
the gateway) and its result comes back on the result topic.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.forward.mqtt import AlertNotice
from gateway.storage.base import DeviceRecord
from protocol import wire
from services.mosquitto import MosquittoServer
from tests.gateway.forward import ha_schema
from tests.gateway.forward.conftest import Observer, reading, retained, until
from tests.gateway.forward.test_mqtt_bridge import CONFIG_OF, ingest, run, running


class _Json(dict[str, Any]):
    """``value_json``: a dict whose keys read as attributes too, as in Jinja."""

    def __getattr__(self, name: str) -> Any:
        value = self[name]
        return _Json(value) if isinstance(value, dict) else value


def render(template: str, value: Any = None, payload: Any = None) -> str:
    """Our templates, rendered as Home Assistant's Jinja would: each ``{{ expression }}`` (Python syntax
    in the subset they use, plus a trailing ``| tojson``) evaluated with ``value`` and ``value_json``."""

    def one(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        to_json = expression.endswith("| tojson")
        if to_json:
            expression = expression[:-len("| tojson")]
        names = {"value": value, "value_json": _Json(payload) if isinstance(payload, dict) else payload}
        result = eval(expression, {"__builtins__": {}}, names)  # our own templates, never input
        return json.dumps(result) if to_json else str(result)

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def topic(component: str, key: str, device: str = "S-1") -> str:
    return f"homeassistant/{component}/edgewire/{key}-{device}/config"


CONTROLS = {("button", "button-reboot"), ("button", "button-ping"), ("number", "number-interval"),
            ("switch", "output-led"), ("switch", "output-buzzer")}
OTHERS = {("binary_sensor", "problem-alerts"), ("sensor", "diag-rssi"), ("sensor", "diag-buffered"),
          ("sensor", "diag-uptime"), ("sensor", "diag-fw")}
STATUS = {"kind": "pi", "fw": "1.2.0", "rssi": -61, "buffered": 3, "up": 125_000, "interval": 30,
          "outputs": {"led": False, "buzzer": True, "Bad-Name": True}}


def check_common(config: dict[str, Any], key: str, keys: frozenset[str]) -> None:
    assert set(config) <= keys, (key, set(config) - keys)
    assert set(config["device"]) <= ha_schema.DEVICE_KEYS and set(config["origin"]) <= ha_schema.ORIGIN_KEYS
    assert config["unique_id"] == f"edgewire:S-1:{key}"
    assert config["device"]["identifiers"] == ["edgewire:S-1"] and config["device"]["name"] == "Room S-1"
    assert [a["topic"] for a in config["availability"]] == ["edgewire/S-1/availability", "edgewire/bridge/gw1/status"]
    assert config["availability_mode"] in ha_schema.AVAILABILITY_MODES
    if "entity_category" in config:
        assert config["entity_category"] in ha_schema.ENTITY_CATEGORIES


def test_devices_are_named_by_label_and_id_from_the_first_config(tmp_path: Path, broker: MosquittoServer) -> None:
    """A device registered after the bridge loaded the registry used to be named by its id until the
    next refresh (60 s): its label is looked up before its first config goes out."""

    async def body() -> None:
        watch = Observer(broker.port, topics=("homeassistant/sensor/#",))
        async with running(tmp_path, broker.url) as (storage, bridge, forwarder):
            for device_id, label in (("S-2", "Cellar"), ("S-3", ""), ("S-4", "Pump S-4")):
                await storage.put_device(DeviceRecord(device_id, True, None, [], label, 1, 1))
            devices = ("S-1", "S-2", "S-3", "S-4")
            await ingest(storage, bridge, forwarder, [reading(d, 1) for d in devices])
            await until(lambda: all(watch.of(CONFIG_OF(d, "humidity")) for d in devices), what="configs")
            first = {d: orjson.loads(watch.of(CONFIG_OF(d, "temperature"))[0])["device"]["name"] for d in devices}
            assert first == {"S-1": "Room S-1", "S-2": "Cellar (S-2)", "S-3": "S-3", "S-4": "Pump S-4"}
        watch.close()

    run(body)


def test_controls_and_diagnostics_round_trip(tmp_path: Path, broker: MosquittoServer) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    async def run_command(device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        calls.append((device_id, name, args))  # what a device gets: the admin API's command path
        return {"ok": True, "msg": f"{name} done", "data": {}}

    async def body() -> None:
        watch = Observer(broker.port, topics=("homeassistant/#", "edgewire/#"))
        async with running(tmp_path, broker.url, run_command=run_command, commands=True) as (storage, bridge, fw):
            bridge.alerts_open([{"id": 5, "device": "S-1", "state": "active", "metric": "temperature",
                                 "severity": "major", "text": "temperature 31.0 °C above 30.0 °C"}])
            bridge.device_online("S-1")
            await ingest(storage, bridge, fw, [reading("S-1", 1)])
            bridge.device_status("S-1", STATUS)
            wanted = CONTROLS | OTHERS
            await until(lambda: all(watch.json(topic(c, k)) for c, k in wanted), what="every config")
            assert not watch.matching(lambda t: "Bad-Name" in t)  # not a name a topic or unique id can hold
            config = {key: watch.json(topic(component, key)) for component, key in wanted}
            status = watch.json("edgewire/S-1/status")

            # -- each config: documented keys, values Home Assistant accepts
            for key in ("button-reboot", "button-ping"):
                button = config[key]
                check_common(button, key, ha_schema.BUTTON_KEYS)
                assert button["command_topic"] == f"edgewire/S-1/command/{key[7:]}" and button["retain"] is False
                assert button.get("device_class", "restart") in ha_schema.BUTTON_DEVICE_CLASSES
            assert config["button-reboot"]["device_class"] == "restart"
            number = config["number-interval"]
            check_common(number, "number-interval", ha_schema.NUMBER_KEYS)
            assert number["mode"] in ha_schema.NUMBER_MODES
            assert number["unit_of_measurement"] in ha_schema.NUMBER_DEVICE_CLASS_UNITS[number["device_class"]]
            # Its range is what set_interval accepts (protocol/wire.py COMMANDS), no more.
            for seconds in (number["min"], number["max"]):
                assert wire.parse_command("set_interval", {"seconds": seconds}) == {"seconds": seconds}
            for seconds in (number["min"] - number["step"], number["max"] + number["step"]):
                with pytest.raises(wire.ProtocolError):
                    wire.parse_command("set_interval", {"seconds": seconds})
            assert render(number["value_template"], payload=status) == "30"
            for name, on in (("led", "OFF"), ("buzzer", "ON")):
                switch = config[f"output-{name}"]
                check_common(switch, f"output-{name}", ha_schema.SWITCH_KEYS)
                assert switch["command_topic"] == "edgewire/S-1/command/set_output"
                assert render(switch["value_template"], payload=status) == on
            problem = config["problem-alerts"]
            check_common(problem, "problem-alerts", ha_schema.BINARY_SENSOR_KEYS)
            assert problem["device_class"] == "problem"
            assert problem["device_class"] in ha_schema.BINARY_SENSOR_DEVICE_CLASSES
            assert render(problem["value_template"], payload=status) == problem["payload_on"]
            attributes = json.loads(render(problem["json_attributes_template"], payload=status))
            assert attributes["open_alerts"] == 1 and attributes["alerts"][0]["id"] == 5
            shown = {"diag-rssi": "-61", "diag-buffered": "3", "diag-uptime": "125", "diag-fw": "1.2.0"}
            for key, text in shown.items():
                diag = config[key]
                check_common(diag, key, ha_schema.SENSOR_KEYS)
                assert diag["entity_category"] == "diagnostic"
                if "device_class" in diag:
                    assert diag["unit_of_measurement"] in ha_schema.SENSOR_DEVICE_CLASS_UNITS[diag["device_class"]]
                assert render(diag["value_template"], payload=status) == text

            # -- one round trip per control, as Home Assistant sends it
            async def press(command_topic: str, payload: str, name: str) -> dict[str, Any]:
                result = f"edgewire/S-1/command/{name}/result"
                before = len(watch.of(result))
                watch.publish(command_topic, payload.encode())
                await until(lambda: len(watch.of(result)) > before, what=f"result of {name}")
                return dict(orjson.loads(watch.of(result)[-1]))

            for name in ("reboot", "ping"):
                button = config[f"button-{name}"]
                assert await press(button["command_topic"], button["payload_press"], name) == {
                    "ok": True, "msg": f"{name} done", "data": {}}
                assert calls[-1] == ("S-1", name, {})
            answer = await press(number["command_topic"], render(number["command_template"], value=45), "set_interval")
            assert answer["ok"] is True and calls[-1] == ("S-1", "set_interval", {"seconds": 45})
            led = config["output-led"]
            answer = await press(led["command_topic"], render(led["command_template"], value=led["payload_on"]),
                                 "set_output")
            assert answer["ok"] is True and calls[-1] == ("S-1", "set_output", {"output": "led", "on": True})
            # ... and its state comes back: the switch shows on.
            await until(lambda: render(led["value_template"], payload=watch.json("edgewire/S-1/status"))
                        == led["payload_on"], what="the switch's state")
            assert len(calls) == 4 and bridge.gate is not None and bridge.gate.counts == {"ok": 4}

            # -- the problem clears with the alert
            bridge.alert_event(AlertNotice("cleared", {"id": 5, "device": "S-1", "state": "cleared"}, 9))
            await until(lambda: render(problem["value_template"], payload=watch.json("edgewire/S-1/status"))
                        == problem["payload_off"], what="problem off")

            # -- deleting the device removes every entity
            await storage.delete_device("S-1")
            await bridge._refresh_registry()
            await until(lambda: all(watch.last(topic(c, k)) == b"" for c, k in wanted)
                        and watch.last("edgewire/S-1/status") == b"", what="entities removed")
            # The engine then clears the deleted device's alerts: that does not bring the device back.
            bridge.alert_event(AlertNotice("cleared", {"id": 6, "device": "S-1", "state": "cleared"}, 10))
            assert "S-1" not in bridge.devices and not bridge._configs
        watch.close()

    run(body)


def test_controls_only_with_mqtt_commands(tmp_path: Path, broker: MosquittoServer) -> None:
    async def run_command(device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {"ok": True}

    async def body() -> None:
        async with running(tmp_path, broker.url, run_command=run_command) as (storage, bridge, fw):
            await ingest(storage, bridge, fw, [reading("S-1", 1)])
            bridge.device_status("S-1", STATUS)
            watch = Observer(broker.port, topics=("homeassistant/#",))
            await until(lambda: all(watch.json(topic(c, k)) for c, k in OTHERS), what="problem and diagnostics")
            watch.close()
            configs = await asyncio.to_thread(retained, broker.port, "homeassistant/#")
            assert not [t for t in configs if "/button/" in t or "/number/" in t or "/switch/" in t], configs

    run(body)

