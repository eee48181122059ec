"""The simulator's exception tree. Each class also inherits the matching built-in."""

from __future__ import annotations


class SimulatorError(Exception):
    """Base of every error the simulator raises on purpose."""


class SimConfigError(SimulatorError, ValueError):
    """A simulator option is invalid; the message names the option and what it accepts."""


class SensorReadError(SimulatorError, OSError):
    """A simulated sensor read failed (dropout, timeout); try again on the next sample."""


class ProvisionError(SimulatorError, RuntimeError):
    """Registering devices with the gateway failed; the message says which device and why."""
