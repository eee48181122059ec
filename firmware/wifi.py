"""Wi-Fi station connection and the exponential backoff (with jitter) used for reconnects."""

import random

import network
from clock import sleep_ms, ticks_diff, ticks_ms


class Backoff:
    """Delays base, 2*base, 4*base ... up to cap, each drawn from [d/2, d] (equal jitter)."""

    def __init__(self, base_ms=1000, cap_ms=60000):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.attempt = 0

    def next_ms(self):
        delay = self.base_ms << self.attempt if self.attempt < 20 else self.cap_ms
        if delay > self.cap_ms:
            delay = self.cap_ms
        else:
            self.attempt += 1
        half = delay // 2
        return half + random.getrandbits(16) % (delay - half + 1)

    def reset(self):
        self.attempt = 0


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
