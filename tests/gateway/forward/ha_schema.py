"""The keys Home Assistant documents for MQTT discovery payloads, kept here to check ours against.

Sources (read 2026-11; the lists below copy the names only):
- https://www.home-assistant.io/integrations/sensor.mqtt/ ("Configuration Variables")
- https://www.home-assistant.io/integrations/binary_sensor.mqtt/ ("Configuration Variables")
- https://www.home-assistant.io/integrations/button.mqtt/, number.mqtt/, switch.mqtt/ (the same)
- https://www.home-assistant.io/integrations/mqtt/ ("Discovery messages": device and origin options)
- https://www.home-assistant.io/integrations/sensor/#device-class (device classes and their units)
- cross-checked with home-assistant/core homeassistant/components/mqtt/sensor.py
  (_PLATFORM_SCHEMA_BASE), schemas.py (MQTT_ENTITY_COMMON_SCHEMA, MQTT_AVAILABILITY_SCHEMA,
  MQTT_ENTITY_DEVICE_INFO_SCHEMA, MQTT_ORIGIN_INFO_SCHEMA), config.py (MQTT_RO_SCHEMA, MQTT_RW_SCHEMA),
  button.py, number.py and switch.py (their PLATFORM_SCHEMA); a button has no state topic.
"""

from __future__ import annotations

COMMON_KEYS = frozenset({
    "availability", "availability_mode", "availability_template", "availability_topic", "default_entity_id",
    "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "origin", "payload_available",
    "payload_not_available", "platform", "qos", "state_topic", "unique_id", "value_template",
})

SENSOR_KEYS = COMMON_KEYS | {
    "device_class", "expire_after", "force_update", "last_reset_value_template", "options", "state_class",
    "suggested_display_precision", "unit_of_measurement",
}

BINARY_SENSOR_KEYS = COMMON_KEYS | {
    "device_class", "expire_after", "force_update", "off_delay", "payload_off", "payload_on",
}

_RW_KEYS = frozenset({"command_topic", "command_template", "optimistic", "retain"})

BUTTON_KEYS = (COMMON_KEYS - {"state_topic", "value_template"}) | {
    "command_template", "command_topic", "device_class", "payload_press", "retain",
}

NUMBER_KEYS = COMMON_KEYS | _RW_KEYS | {
    "device_class", "max", "min", "mode", "payload_reset", "step", "unit_of_measurement",
}

SWITCH_KEYS = COMMON_KEYS | _RW_KEYS | {"device_class", "payload_off", "payload_on", "state_off", "state_on"}

BUTTON_DEVICE_CLASSES = frozenset({"identify", "restart", "update"})

NUMBER_MODES = frozenset({"auto", "box", "slider"})

NUMBER_DEVICE_CLASS_UNITS = {"duration": {"d", "h", "min", "s", "ms"}}

AVAILABILITY_KEYS = frozenset({"payload_available", "payload_not_available", "topic", "value_template"})

DEVICE_KEYS = frozenset({
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
})

ORIGIN_KEYS = frozenset({"name", "sw_version", "support_url"})

STATE_CLASSES = frozenset({"measurement", "measurement_angle", "total", "total_increasing"})

AVAILABILITY_MODES = frozenset({"all", "any", "latest"})

ENTITY_CATEGORIES = frozenset({"config", "diagnostic"})

BINARY_SENSOR_DEVICE_CLASSES = frozenset({"connectivity", "problem", "running", "power", "plug", "update"})

# Sensor device classes Edgewire's metric table uses, with the units Home Assistant accepts for each.
SENSOR_DEVICE_CLASS_UNITS = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "atmospheric_pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "carbon_dioxide": {"ppm"},
    "illuminance": {"lx"},
    "moisture": {"%"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "battery": {"%"},
    "signal_strength": {"dB", "dBm"},
    "duration": {"d", "h", "min", "s", "ms"},
}
