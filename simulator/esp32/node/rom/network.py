"""``network`` of the emulated ESP32: the station interface, against the board's scripted access point.

The access point (SSID, password, present or not, link up or dropped) is the board's world
(world.json in its state directory); association takes a few hundred milliseconds and fails
with the real status codes: STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD, STAT_BEACON_TIMEOUT.
"""

import _bridge

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204


class WLAN:
    def __init__(self, interface=STA_IF):
        if interface != STA_IF:
            raise OSError(95)  # the emulated board has the station interface only
        self.interface = interface

    def active(self, on=None):
        return _bridge.call("wlan", fn="active", on=on)

    def connect(self, ssid=None, key=None, bssid=None):
        _bridge.call("wlan", fn="connect", ssid=ssid, key=key)

    def disconnect(self):
        _bridge.call("wlan", fn="disconnect")

    def isconnected(self):
        return _bridge.call("wlan", fn="isconnected")

    def status(self, param=None):
        return _bridge.call("wlan", fn="status", param=param)

    def ifconfig(self, config=None):
        return tuple(_bridge.call("wlan", fn="ifconfig"))

    def config(self, *args, **kwargs):
        if args == ("mac",):
            return bytes(_bridge.call("unique_id"))
        return None
