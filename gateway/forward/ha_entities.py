"""Every Home Assistant entity of one device, and its ``status`` payload (pure: no I/O).

Per device (docs/mqtt.md), besides one sensor per metric (discovery.sensor_config):

| key | component | from |
|---|---|---|
| ``problem-alerts`` | binary_sensor, device_class problem | its open alerts (on while any is open) |
| ``diag-rssi``, ``-buffered``, ``-uptime``, ``-fw`` | sensor, entity_category diagnostic | its status frames |
| ``button-reboot``, ``button-ping`` | button | the command of that name (only with ``mqtt_commands``) |
| ``number-interval`` | number | ``set_interval``, its range from ``protocol.wire.COMMANDS`` (same) |
| ``output-<name>`` | switch, one per output its status frames report | ``set_output`` (same) |

Keys hold a ``-``, which metric names never do, so an entity never takes a metric's topic or id.
The problem and diagnostic entities read ``P/<device>/status`` (retained), which the bridge
publishes from what it knows (``status_payload``). The controls publish on the command topics
(``P/<device>/command/<name>``), so a button press goes the way of every MQTT command:
gateway/forward/mqtt_commands.py, checked against the command table, then the admin API's
command path. A diagnostic entity appears once its device has reported the field.
"""

from __future__ import annotations

from typing import Any

from gateway.forward.discovery import DeviceInfo, Topics, entity_base, sensor_config, text_field
from gateway.metric_table import BUILT_IN, MetricTable
from protocol import wire

PROBLEM = "problem-alerts"
MAX_ALERTS_SHOWN = 10  # alerts listed in the status payload (its attributes in Home Assistant)
MAX_OUTPUTS = 16  # switches per device

# health field -> (key, name, unit, device_class, state_class); values come from status frames
DIAGNOSTICS: dict[str, tuple[str, str, str | None, str | None, str | None]] = {
    "rssi": ("diag-rssi", "Signal", "dBm", "signal_strength", "measurement"),
    "buffered": ("diag-buffered", "Queued readings", "readings", None, "measurement"),
    "uptime_s": ("diag-uptime", "Uptime", "s", "duration", "measurement"),
    "fw": ("diag-fw", "Firmware", None, None, None),
}
BUTTONS = (("reboot", "Reboot", "restart"), ("ping", "Ping", None))  # command, name, device_class


def _finite(value: Any) -> bool:
    return wire.is_number(value) and wire.is_finite(value)


def health_fields(status: dict[str, Any]) -> dict[str, Any]:
    """What the entities show of a status frame (any fields, from the device: checked, bounded)."""
    out: dict[str, Any] = {}
    if _finite(status.get("rssi")):
        out["rssi"] = status["rssi"]
    if _finite(status.get("buffered")):
        out["buffered"] = status["buffered"]
    if _finite(status.get("up")):  # ms since the device started (the simulator, the Pi agent, the firmware)
        out["uptime_s"] = int(status["up"] // 1000)
    fw = text_field(status.get("fw"))
    if fw:
        out["fw"] = fw
    if _finite(status.get("interval")):  # the Pi agent: seconds
        out["interval_s"] = status["interval"]
    elif _finite(status.get("interval_ms")):  # the ESP32 firmware
        out["interval_s"] = status["interval_ms"] / 1000
    return out


def outputs_of(status: dict[str, Any]) -> dict[str, bool] | None:
    """The status field ``outputs`` ({name: on}); None when absent. Names that are not metric-like
    (a-z 0-9 _) get no switch: they would not fit a topic or a unique id."""
    raw = status.get("outputs")
    if not isinstance(raw, dict):
        return None
    return {name: value for name, value in list(raw.items())[:MAX_OUTPUTS]
            if wire.valid_metric_name(name) and isinstance(value, bool)}


def apply_status(info: DeviceInfo, status: dict[str, Any]) -> bool:
    """A status frame's news for ``info``; True when its configs change (model, firmware, entities)."""
    before = info.signature()
    info.kind = text_field(status.get("kind")) or info.kind
    info.fw = text_field(status.get("fw")) or info.fw
    info.health = health_fields(status)
    outputs = outputs_of(status)
    if outputs is not None:
        info.outputs = outputs
    return info.signature() != before


def apply_alert(info: DeviceInfo, alert: dict[str, Any]) -> bool:
    """An alert as it is now (open, or cleared); True when it is one (its id is an integer)."""
    alert_id = alert.get("id")
    if not isinstance(alert_id, int):
        return False
    if alert.get("state") == "cleared":
        info.alerts.pop(alert_id, None)
    else:
        info.alerts[alert_id] = alert
    return True


def status_payload(info: DeviceInfo) -> dict[str, Any]:
    """``P/<device>/status``: open alerts, then the health fields and outputs."""
    alerts = [info.alerts[i] for i in sorted(info.alerts)]
    return {
        "problem": "ON" if alerts else "OFF",
        "open_alerts": len(alerts),
        "alerts": [{k: a.get(k) for k in ("id", "metric", "severity", "text")} for a in alerts[:MAX_ALERTS_SHOWN]],
        **info.health,
        "outputs": {name: "ON" if on else "OFF" for name, on in sorted(info.outputs.items())},
    }


def _field(name: str) -> str:
    return f"{{{{ value_json['{name}'] if '{name}' in value_json else '' }}}}"


def entity_configs(info: DeviceInfo, topics: Topics, version: str, table: MetricTable = BUILT_IN,
                   controls: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(config topic, payload) of every entity of the device; ``controls`` adds buttons, number, switches."""
    device_id = info.device_id
    status = topics.status_of(device_id)
    out = [(topics.config(device_id, m), sensor_config(info, m, topics, version, table)) for m in sorted(info.metrics)]
    problem = entity_base(info, PROBLEM, "Problem", topics, version)
    problem.update({"state_topic": status, "value_template": "{{ value_json.problem }}", "payload_on": "ON",
                    "payload_off": "OFF", "device_class": "problem", "json_attributes_topic": status,
                    "json_attributes_template": "{{ {'open_alerts': value_json.open_alerts, "
                                                "'alerts': value_json.alerts} | tojson }}"})
    out.append((topics.config(device_id, PROBLEM, "binary_sensor"), problem))
    for name, (key, label, unit, device_class, state_class) in DIAGNOSTICS.items():
        if name not in info.health:
            continue
        config = entity_base(info, key, label, topics, version)
        config.update({"state_topic": status, "value_template": _field(name), "entity_category": "diagnostic"})
        for option, value in (("unit_of_measurement", unit), ("device_class", device_class),
                              ("state_class", state_class)):
            if value is not None:
                config[option] = value
        out.append((topics.config(device_id, key), config))
    if controls:
        out += _controls(info, topics, version)
    return out


def _controls(info: DeviceInfo, topics: Topics, version: str) -> list[tuple[str, dict[str, Any]]]:
    device_id = info.device_id
    out = []
    for command, label, device_class in BUTTONS:
        key = f"button-{command}"
        config = entity_base(info, key, label, topics, version)
        config.update({"command_topic": topics.command(device_id, command), "payload_press": "{}", "retain": False,
                       "entity_category": "config" if command == "reboot" else "diagnostic"})
        if device_class:
            config["device_class"] = device_class
        out.append((topics.config(device_id, key, "button"), config))
    number = entity_base(info, "number-interval", "Sampling interval", topics, version)
    number.update({"command_topic": topics.command(device_id, "set_interval"),
                   "command_template": "{\"seconds\": {{ value }}}", "retain": False,
                   "min": 1, "max": wire.MAX_INTERVAL_S, "step": 1, "mode": "box", "unit_of_measurement": "s",
                   "device_class": "duration", "entity_category": "config",
                   "state_topic": topics.status_of(device_id), "value_template": _field("interval_s")})
    out.append((topics.config(device_id, "number-interval", "number"), number))
    for name in sorted(info.outputs):
        key = f"output-{name}"
        switch = entity_base(info, key, name.replace("_", " ").capitalize(), topics, version)
        switch.update({"command_topic": topics.command(device_id, "set_output"),
                       "command_template": f"{{\"output\": \"{name}\", \"on\": "
                                           "{{ 'true' if value == 'ON' else 'false' }}}",
                       "retain": False, "state_topic": topics.status_of(device_id),
                       "value_template": f"{{{{ value_json.outputs['{name}'] if '{name}' in value_json.outputs "
                                         "else '' }}",
                       "payload_on": "ON", "payload_off": "OFF"})
        out.append((topics.config(device_id, key, "switch"), switch))
    return out

