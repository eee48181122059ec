"""``esp32`` of the emulated ESP32 (the parts an app may probe)."""

import _bridge

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True


def wake_on_ext0(pin, level):
    pass


def raw_temperature():
    return 120


def mcu_temperature():
    return 49


def idf_heap_info(capabilities):
    return []


def reset_cause():
    return _bridge.call("reset_cause")
