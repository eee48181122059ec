"""The gateway's exception tree. Each class also inherits the matching built-in."""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class StorageError(GatewayError, OSError):
    """The storage backend failed; nothing unacknowledged was stored."""


class RegistryError(GatewayError, LookupError):
    """A device registry operation failed (unknown device, duplicate id, ...)."""


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
