"""Edgewire Raspberry Pi edge agent: sensors, local outputs, durable queue, protocol v1 uplink."""

__version__ = "0.1.0"
