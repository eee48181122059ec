"""Wi-Fi station connection; reconnects back off with protocol.device.Backoff."""

import network
from clock import sleep_ms, ticks_diff, ticks_ms

from protocol.device import Backoff

# network.WLAN.status() of the ESP32 port when an attempt fails -> what the log says
REASONS = {
    200: "link lost (beacon timeout)",
    201: "access point not found",
    202: "wrong password",
    203: "association failed",
    204: "handshake timeout (wrong password?)",
}


class WiFi:
    """The station interface. ``connect()`` makes one bounded attempt; ``wait`` feeds the watchdog."""

    def __init__(self, ssid, password, wait_ms=sleep_ms, timeout_ms=15000):
        self.ssid = ssid
        self.password = password
        self.wait_ms = wait_ms
        self.timeout_ms = timeout_ms
        self.wlan = network.WLAN(network.STA_IF)
        self.backoff = Backoff(1000, 60000)
        self.failures = 0
        self.reason = None  # why the last attempt failed (REASONS), for the log

    def isconnected(self):
        return self.wlan.isconnected()

    def connect(self):
        """One attempt within timeout_ms; True when connected. Never raises for radio errors."""
        if self.wlan.isconnected():
            return True
        try:
            self.wlan.active(True)
            self.wlan.connect(self.ssid, self.password)
        except OSError as err:
            self.failures += 1
            self.reason = "radio error " + str(err)
            return False
        start = ticks_ms()
        status = None
        while ticks_diff(ticks_ms(), start) < self.timeout_ms:
            if self.wlan.isconnected():
                self.backoff.reset()
                self.reason = None
                return True
            status = self._status()
            if status in REASONS:  # a definite failure: no use waiting out the timeout
                break
            self.wait_ms(100)
        self.failures += 1
        self.reason = REASONS.get(status, "timeout (status " + str(status) + ")")
        try:
            self.wlan.disconnect()
        except OSError:
            pass
        return False

    def _status(self):
        try:
            return self.wlan.status()
        except (OSError, ValueError, TypeError):
            return None

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError, TypeError):
            return None
