"""The services package's exception tree. Each class also inherits the matching built-in."""


class ServiceError(RuntimeError):
    """A throwaway server could not be set up, started or stopped; the message says what to check."""


class NotInstalledError(ServiceError, FileNotFoundError):
    """The server's binaries are missing; the message gives the apt-get command."""
