"""Wi-Fi station connection; reconnects back off with protocol.device.Backoff."""

import network
from clock import sleep_ms, ticks_diff, ticks_ms

from protocol.device import Backoff


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

    def isconnected(self):
        return self.wlan.isconnected()

    def connect(self):
        """One attempt within timeout_ms; True when connected. Never raises for radio errors."""
        if self.wlan.isconnected():
            return True
        try:
            self.wlan.active(True)
            self.wlan.connect(self.ssid, self.password)
        except OSError:
            self.failures += 1
            return False
        start = ticks_ms()
        while ticks_diff(ticks_ms(), start) < self.timeout_ms:
            if self.wlan.isconnected():
                self.backoff.reset()
                return True
            self.wait_ms(100)
        self.failures += 1
        try:
            self.wlan.disconnect()
        except OSError:
            pass
        return False

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError, TypeError):
            return None
