"""``ntptime`` of the emulated ESP32: the port's clock is the host's, already set; settime()
fails like an unreachable server while the station is not connected."""

import _bridge

host = "pool.ntp.org"
timeout = 1


def settime():
    if not _bridge.call("wlan", fn="isconnected"):
        raise OSError(110)  # ETIMEDOUT
