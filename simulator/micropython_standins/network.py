"""Stand-in for MicroPython's ``network`` (station interface only).

The access point exists unless sim.json says ``"wifi": false``; while it is
down, connects fail and a connected station drops.
"""

from __future__ import annotations

from typing import Any

from simulator.micropython_standins import _simstate, utime

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202

CONNECT_MS = 300  # simulated association + DHCP time


class WLAN:
    def __init__(self, interface: int = STA_IF) -> None:
        self.interface = interface
        self._active = False
        self._ssid: str | None = None
        self._since = 0.0

    def active(self, on: bool | None = None) -> bool:
        if on is not None:
            self._active = bool(on)
        return self._active

    def connect(self, ssid: str | None = None, key: str | None = None, **_kw: Any) -> None:
        if not self._active:
            raise OSError("Wifi Not Started")
        self._ssid = ssid
        self._since = utime.sim_seconds()

    def disconnect(self) -> None:
        self._ssid = None

    def isconnected(self) -> bool:
        if not self._active or self._ssid is None:
            return False
        if not _simstate.setting("wifi", True):
            return False
        return (utime.sim_seconds() - self._since) * 1000 >= CONNECT_MS

    def status(self, param: str | None = None) -> int:
        if param == "rssi":
            if not self.isconnected():
                raise OSError("not connected")
            return int(_simstate.setting("rssi", -61))
        if self.isconnected():
            return STAT_GOT_IP
        if self._ssid is not None and not _simstate.setting("wifi", True):
            return STAT_NO_AP_FOUND
        return STAT_CONNECTING if self._ssid else STAT_IDLE

    def ifconfig(self) -> tuple[str, str, str, str]:
        return ("192.168.4.23", "255.255.255.0", "192.168.4.1", "192.168.4.1")

    def config(self, *args: str, **_kw: Any) -> Any:
        if args == ("mac",):
            return b"\x24\x0a\xc4\x00\x00\x01"
        return None
