"""The gateway's exception tree. Each class also inherits the matching built-in."""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class StorageError(GatewayError, OSError):
    """The storage backend failed; nothing unacknowledged was stored."""


class RegistryError(GatewayError, LookupError):
    """A device registry operation failed (unknown device, duplicate id, ...)."""


class DeviceOffline(RegistryError):
    """A command for a device that has no session on this gateway."""

    code = "device_offline"


class AuthError(GatewayError, PermissionError):
    """A credential was refused. ``code`` is a protocol error code (E_*)."""

    def __init__(self, code: str, message: str, http_status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class RequestError(GatewayError, ValueError):
    """A request parameter (HTTP query, CLI option) is missing or invalid; ``param`` names it."""

    def __init__(self, param: str, message: str, status: int = 400) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message
        self.status = status


class UnknownMetric(RequestError):
    """The device has stored no reading of the metric asked for; ``metrics`` are the ones it has."""

    code = "unknown_metric"

    def __init__(self, param: str, device_id: str, metric: str, metrics: list[str]) -> None:
        has = f"its metrics: {', '.join(metrics)}" if metrics else "it has stored no readings yet"
        super().__init__(param, f"device {device_id} has no metric {metric!r}; {has}", 404)
        self.metrics = metrics


class BusError(GatewayError, ConnectionError):
    """The bus (Redis or NATS) failed an operation. ``code`` is a stable error code for callers."""

    code = "bus_unavailable"


class BusUnavailable(BusError):
    """The bus is down or still rebuilding: the operation was not tried (fail fast)."""


class NoResponder(BusError):
    """No instance of that name listens on the bus (it stopped, crashed or is cut off)."""

    code = "no_responder"


class BusTimeout(BusError, TimeoutError):
    """A request over the bus got no reply in time."""

    code = "bus_timeout"


class TooManyCommands(GatewayError, OverflowError):
    """The device already has the most pending commands allowed; nothing was queued."""

    code = "too_many_commands"


class RemoteError(BusError):
    """Another instance answered a request with an error; ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AlertError(GatewayError, ValueError):
    """An alert or alert-rule operation was refused. ``code`` is a stable error code for callers
    (bad_rule, no_such_rule, no_such_alert, alert_cleared, bad_request, storage_unavailable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CommandError(GatewayError, LookupError):
    """A command to a device failed; ``code`` is stable (docs/protocol.md section 8): ``device_offline``,
    ``command_expired``, ``command_lost``, ``not_found``, or the code another instance answered."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class OtaError(GatewayError, ValueError):
    """An OTA operation was refused (docs/ota.md). ``code`` is stable: ``ota_unavailable``,
    ``bad_release``, ``release_exists``, ``no_such_release``, ``release_in_use``, ``unsigned``,
    ``no_such_rollout``, ``bad_rollout``, ``bad_state``, ``no_members``, ``signing_key``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GroupError(RegistryError):
    """A label or a device group was refused (gateway/groups.py). ``code`` is stable: ``bad_label``,
    ``bad_group``, ``empty_group`` (no registered device matches), ``not_found`` (a listed id is not
    registered)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
