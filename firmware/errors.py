"""Firmware errors: one small tree, each class also the matching built-in.

MicroPython allows only one built-in base per class ("multiple bases have
instance lay-out conflict"), so the classes cannot share a common Python base
AND inherit a built-in; FIRMWARE_ERRORS is the tuple that catches them all.
"""


class ConfigError(ValueError):
    """/config.json is missing, not JSON, or a key has the wrong type/range."""


class NetError(OSError):
    """Wi-Fi or WebSocket failure. ``close_code`` if the peer closed; ``http_status`` and
    ``http_body`` (the response body, bytes) if the gateway refused the upgrade."""

    close_code = 0
    http_status = 0
    http_body = None


class RingError(OSError):
    """The flash ring file cannot be used (I/O error, record too large)."""


class SensorError(OSError):
    """No value from the sensor (and no earlier good value to repeat)."""


FIRMWARE_ERRORS = (ConfigError, NetError, RingError, SensorError)
