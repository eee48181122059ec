"""Outputs through gpiozero: a status LED with patterns, a buzzer and a relay.

The LED shows the agent's state; patterns are (on seconds, off seconds), None =
steady on. Priority: alert > connecting/buffering > online. The buzzer and relay
follow gateway commands (``set_output``) and, while the gateway is unreachable,
local alert rules; when the gateway is back they return to the last commanded state.
"""

from __future__ import annotations

import logging
from typing import Any

from edge.config import OutputSpec
from edge.errors import OutputError

LOG = logging.getLogger("edgewire.edge.outputs")

CONNECTING = "connecting"
ONLINE = "online"
BUFFERING = "buffering"
ALERT = "alert"
OFF = "off"

# state -> (on_time, off_time) for LED.blink, or None for steady on. Adding a state = one row.
PATTERNS: dict[str, tuple[float, float] | None] = {
    CONNECTING: (0.5, 0.5),  # even blink: looking for the gateway
    BUFFERING: (0.1, 1.9),  # short flash every 2 s: offline, readings kept on disk
    ONLINE: None,  # steady on
    ALERT: (0.1, 0.1),  # fast blink: a local alert rule is active
}


class Outputs:
    """The configured outputs; missing ones are simply absent (commands answer ok: false)."""

    def __init__(self, specs: dict[str, OutputSpec]) -> None:
        self.devices: dict[str, Any] = {}
        self.commanded: dict[str, bool] = {}
        self.local: dict[str, bool] = {}
        self.pattern = OFF
        try:
            from gpiozero import LED, Buzzer, OutputDevice

            for name, spec in specs.items():
                if name == "led":
                    self.devices[name] = LED(spec.pin, active_high=spec.active_high, initial_value=False)
                elif name == "buzzer":
                    self.devices[name] = Buzzer(spec.pin, active_high=spec.active_high, initial_value=False)
                else:
                    self.devices[name] = OutputDevice(spec.pin, active_high=spec.active_high,
                                                      initial_value=False)
                self.commanded[name] = False
        except Exception as err:  # gpiozero raises its own tree (BadPinFactory, GPIOPinInUse, ...)
            self.close()
            raise OutputError(f"cannot set up outputs: {err}; check the pin numbers (BCM), that the user is "
                              "in the gpio group, and that no other program holds the pins") from err

    def show(self, state: str) -> None:
        """Show ``state`` (a PATTERNS key or OFF) on the status LED; no-op if unchanged."""
        if state == self.pattern:
            return
        self.pattern = state
        led = self.devices.get("led")
        if led is None:
            return
        if state == OFF:
            led.off()
            return
        pattern = PATTERNS[state]
        if pattern is None:
            led.on()
        else:
            led.blink(on_time=pattern[0], off_time=pattern[1], background=True)

    def set(self, name: str, on: bool, source: str = "command") -> None:
        """Switch ``name``; ``source`` is "command" (remembered) or "rule" (local, while offline)."""
        device = self.devices.get(name)
        if device is None or (name == "led" and source == "rule"):
            raise OutputError(f"no output {name!r}; configured: {', '.join(self.devices) or 'none'}")
        if name == "led":
            # a commanded LED overrides the status pattern until set back off
            self.pattern = "commanded" if on else OFF
            device.on() if on else device.off()
            return
        if source == "command":
            self.commanded[name] = on
        else:
            self.local[name] = on
        device.on() if on else device.off()

    def restore(self) -> None:
        """Back online: drop local overrides, return to the commanded states."""
        for name in list(self.local):
            self.devices[name].on() if self.commanded.get(name) else self.devices[name].off()
        self.local.clear()

    def states(self) -> dict[str, bool]:
        """Output name -> active (on), after active_high is applied."""
        return {name: bool(device.is_active) for name, device in self.devices.items()}

    def pin_levels(self) -> dict[str, int]:
        """Output name -> electrical level of its pin (1 = high), as the pin factory reports it."""
        return {name: int(bool(device.pin.state)) for name, device in self.devices.items()
                if device.pin is not None}

    def close(self) -> None:
        for device in self.devices.values():
            try:
                device.close()
            except Exception as err:  # closing must not hide the original problem
                LOG.debug("closing output failed: %s", err)
        self.devices.clear()
