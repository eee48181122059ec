"""MicroPython-side stand-in for ``network``: an access point that is always there."""

STA_IF = 0


class WLAN:
    def __init__(self, interface=0):
        self._on = False

    def active(self, on=None):
        if on is not None:
            self._on = on
        return self._on

    def connect(self, ssid, key=None):
        self._on = True

    def disconnect(self):
        pass

    def isconnected(self):
        return self._on

    def status(self, param=None):
        return -60 if param == "rssi" else 1010
