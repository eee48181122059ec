"""A simulated device's commands (protocol.device.DeviceSession checks their arguments first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulator.device_base import DeviceBase

OUTPUTS = ("led", "relay", "buzzer")

CommandResult = tuple[bool, str, dict[str, Any] | None]


class Commands(DeviceBase):
    """set_interval, set_thresholds, set_output, reboot and ping, as a VirtualDevice answers them."""

    def command_handlers(self) -> dict[str, Callable[[dict[str, Any]], CommandResult]]:
        """The handlers table for DeviceSession: command name -> handler(args)."""
        return {"set_interval": self._cmd_set_interval, "set_thresholds": self._cmd_set_thresholds,
                "set_output": self._cmd_set_output, "reboot": self._cmd_reboot, "ping": self._cmd_ping}

    def _cmd_set_interval(self, args: dict[str, Any]) -> CommandResult:
        seconds = float(args["seconds"])
        self.interval_s = seconds
        self.rate = 1.0 / seconds
        self._next_sample_at = self._time() + seconds
        return True, f"interval {seconds:g} s", None

    def _cmd_set_thresholds(self, args: dict[str, Any]) -> CommandResult:
        metric, high, low = args["metric"], args.get("high"), args.get("low")
        self.thresholds[metric] = (None if low is None else float(low), None if high is None else float(high))
        return True, f"{metric} thresholds low {low}, high {high}", None

    def _cmd_set_output(self, args: dict[str, Any]) -> CommandResult:
        output, on = args["output"], args["on"]
        if output not in self.outputs:
            return False, f"no output {output!r}; configured: {', '.join(OUTPUTS)}", None
        self.outputs[output] = on
        return True, f"{output} {'on' if on else 'off'}", None

    def _cmd_reboot(self, args: dict[str, Any]) -> CommandResult:
        self.reboot_pending = True
        return True, "rebooting", None

    def _cmd_ping(self, args: dict[str, Any]) -> CommandResult:
        return True, "pong", None
