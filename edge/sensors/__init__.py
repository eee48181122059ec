"""Sensors behind one small interface; see base.SENSOR_TYPES for the table."""

from edge.sensors.base import (
    SENSOR_TYPES,
    Sample,
    Sensor,
    SensorContext,
    SensorSpec,
    build_sensor,
    validate_sensor,
)

__all__ = [
    "SENSOR_TYPES", "Sample", "Sensor", "SensorContext", "SensorSpec", "build_sensor", "validate_sensor",
]
