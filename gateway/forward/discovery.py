"""The MQTT topics of the bridge and the Home Assistant discovery payloads (pure: no I/O).

Topics (``P`` = ``mqtt_prefix``, ``D`` = ``mqtt_discovery_prefix``, docs/mqtt.md):

| topic | payload |
|---|---|
| ``P/<device>/state`` | the latest reading (gateway/forward/payload.py), retained |
| ``P/<device>/availability`` | ``online`` / ``offline``, retained |
| ``P/<device>/status`` | the device's open alerts and health (gateway/forward/ha_entities.py), retained |
| ``P/<device>/alert`` | an alert event (JSON), not retained |
| ``P/<device>/command/<name>`` | JSON arguments of a command (only with ``mqtt_commands``) |
| ``P/<device>/command/<name>/result`` | the command's result (JSON), not retained |
| ``P/bridge/<instance>/status`` | ``online``, or ``offline`` (last will), retained |
| ``D/sensor/edgewire/<metric>-<device>/config`` | one sensor entity per metric of a device, retained |
| ``D/<component>/edgewire/<key>-<device>/config`` | its other entities (ha_entities.py): keys hold a ``-``, retained |
| ``D/binary_sensor/edgewire/gateway_<instance>/config`` | the gateway itself (connectivity), retained |
| ``D/status`` | Home Assistant's ``online`` (its birth message): every config is published again |

Everything an entity says about its metric (unit, device_class, state_class, name) comes from
the gateway's metric table (gateway/metric_table.py: ``protocol.wire.METRICS`` and the
configuration's ``[[metrics]]``). One Home Assistant device per Edgewire device (identifiers
``edgewire:<device>``), named "<label> (<id>)" (``device_name``), linked ``via_device`` to the
gateway's device (``edgewire-gateway:<instance>``). An entity is available only while both its device's
availability and the bridge's status say ``online`` (``availability_mode: all``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.metric_table import BUILT_IN, MetricTable
from protocol import wire

NODE_ID = "edgewire"
MANUFACTURER = "Edgewire"
MODELS = {"esp32": "Edgewire ESP32 node", "pi": "Edgewire Pi agent",  # status field "kind" -> model
          "phone": "Edgewire phone page"}
UNKNOWN_MODEL = "Edgewire device"
GATEWAY_MODEL = "Edgewire gateway"
ONLINE = b"online"
OFFLINE = b"offline"
MAX_INFO = 64  # characters kept of a device-reported fw / kind
_OBJECT_ID_OK = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(slots=True)
class DeviceInfo:
    """What the bridge knows of a device for its Home Assistant device and entities."""

    device_id: str
    label: str = ""  # the registry label: part of the Home Assistant device name when set
    kind: str = ""  # status field "kind": "esp32", "pi" or "phone"
    fw: str = ""  # status field "fw": the software version
    metrics: set[str] = field(default_factory=set)
    health: dict[str, Any] = field(default_factory=dict)  # from status frames (ha_entities.health_fields)
    outputs: dict[str, bool] = field(default_factory=dict)  # status field "outputs": name -> on
    alerts: dict[int, dict[str, Any]] = field(default_factory=dict)  # open alerts by id

    @property
    def model(self) -> str:
        return MODELS.get(self.kind, UNKNOWN_MODEL)

    @property
    def name(self) -> str:
        """The Home Assistant device name: "Greenhouse (SENSOR-01)"; the id alone without a label."""
        label = self.label.strip()
        if not label or self.device_id in label:
            return label or self.device_id
        return f"{label} ({self.device_id})"

    def signature(self) -> tuple[Any, ...]:
        """Changes whenever the device's configs would change (values shown by entities do not count)."""
        return (self.label, self.kind, self.fw, frozenset(self.metrics), frozenset(self.health),
                frozenset(self.outputs))


def object_id(device_id: str) -> str:
    """The device's part of a discovery topic. Home Assistant allows A-Z a-z 0-9 _ - there; device ids
    also allow ``.`` and ``:``, so such an id gets them replaced and a hash of the real id appended
    (two ids never share a topic). The topic's object id is ``<metric>-<this>``: metric names
    have no ``-``, so the first ``-`` splits it without ambiguity."""
    if _OBJECT_ID_OK.match(device_id):
        return device_id
    digest = hashlib.sha256(device_id.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_-]", "_", device_id) + "_" + digest


def text_field(value: Any) -> str:
    """A device-reported string for Home Assistant: str only, bounded."""
    return value[:MAX_INFO] if isinstance(value, str) else ""


class Topics:
    """Every topic of one bridge instance."""

    def __init__(self, prefix: str, discovery_prefix: str, instance: str) -> None:
        self.prefix = prefix
        self.discovery_prefix = discovery_prefix
        self.instance = instance
        self.status = f"{prefix}/bridge/{instance}/status"
        self.ha_status = f"{discovery_prefix}/status"
        self.configs = f"{discovery_prefix}/+/{NODE_ID}/+/config"  # every config of ours
        self.commands = f"{prefix}/+/command/+"
        self.bridge_config = f"{discovery_prefix}/binary_sensor/{NODE_ID}/gateway_{instance}/config"

    def state(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/state"

    def availability(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/availability"

    def alert(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/alert"

    def status_of(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/status"

    def of_device(self, device_id: str) -> list[str]:
        """The retained topics of a device besides its configs: cleared when it is deleted."""
        return [self.state(device_id), self.availability(device_id), self.status_of(device_id)]

    def command(self, device_id: str, name: str) -> str:
        return f"{self.prefix}/{device_id}/command/{name}"

    def result(self, device_id: str, name: str) -> str:
        return f"{self.prefix}/{device_id}/command/{name}/result"

    def config(self, device_id: str, metric: str, component: str = "sensor") -> str:
        """A config topic: ``metric`` is a metric name, or the key of another entity (with a ``-``)."""
        return f"{self.discovery_prefix}/{component}/{NODE_ID}/{metric}-{object_id(device_id)}/config"

    def command_of(self, topic: str) -> tuple[str, str] | None:
        """(device, command name) of a command topic; None if it is not one."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 3 or parts[1] != "command":
            return None
        return parts[0], parts[2]


def gateway_identifier(instance: str) -> str:
    return f"edgewire-gateway:{instance}"


def device_identifier(device_id: str) -> str:
    return f"edgewire:{device_id}"


def unique_id(device_id: str, metric: str) -> str:
    """Stable across restarts and instances; metric names have no ':', so it splits at the last one."""
    return f"edgewire:{device_id}:{metric}"


def device_of_unique_id(text: Any) -> str | None:
    if not isinstance(text, str) or not text.startswith("edgewire:") or text.count(":") < 2:
        return None
    device_id = text[len("edgewire:"):].rsplit(":", 1)[0]
    return device_id if wire.valid_device_id(device_id) else None


def device_of_config(payload: bytes) -> str | None:
    """The device of a retained discovery config of ours (its unique id); None for anything else."""
    if not payload:
        return None
    try:
        config = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return device_of_unique_id(config.get("unique_id") if isinstance(config, dict) else None)


def origin(version: str) -> dict[str, str]:
    return {"name": "Edgewire", "sw_version": version}


def device_block(info: DeviceInfo, topics: Topics) -> dict[str, Any]:
    """The ``device`` of every entity of a device."""
    device: dict[str, Any] = {
        "identifiers": [device_identifier(info.device_id)],
        "name": info.name,
        "manufacturer": MANUFACTURER,
        "model": info.model,
        "via_device": gateway_identifier(topics.instance),
    }
    if info.fw:
        device["sw_version"] = info.fw
    return device


def entity_base(info: DeviceInfo, key: str, name: str, topics: Topics, version: str) -> dict[str, Any]:
    """What every entity of a device has: name, unique id, availability, device, origin."""
    return {
        "name": name,
        "unique_id": unique_id(info.device_id, key),
        "availability": [{"topic": topics.availability(info.device_id)}, {"topic": topics.status}],
        "availability_mode": "all",
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "device": device_block(info, topics),
        "origin": origin(version),
    }


def sensor_config(info: DeviceInfo, metric: str, topics: Topics, version: str,
                  table: MetricTable = BUILT_IN) -> dict[str, Any]:
    """The discovery payload of one metric of one device."""
    unit, _low, _high, device_class, label = table.row(metric) or ("", 0.0, 0.0, None, "")
    config = entity_base(info, metric, label or metric.replace("_", " ").capitalize(), topics, version)
    config.update({
        "state_topic": topics.state(info.device_id),
        # A reading without this metric renders '', which Home Assistant ignores for numeric sensors.
        "value_template": f"{{{{ value_json.metrics['{metric}'] if '{metric}' in value_json.metrics else '' }}}}",
        "state_class": table.state_class(metric),
    })
    if device_class is not None:
        config["device_class"] = device_class
    if unit:
        config["unit_of_measurement"] = unit
    return config


def bridge_config(topics: Topics, version: str) -> dict[str, Any]:
    """The gateway as a Home Assistant device with one connectivity entity: its bridge status."""
    return {
        "name": "Bridge",
        "unique_id": f"{gateway_identifier(topics.instance)}:bridge",
        "state_topic": topics.status,
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "qos": 1,
        "device": {"identifiers": [gateway_identifier(topics.instance)], "name": f"Edgewire gateway {topics.instance}",
                   "manufacturer": MANUFACTURER, "model": GATEWAY_MODEL, "sw_version": version},
        "origin": origin(version),
    }


def encode(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)
