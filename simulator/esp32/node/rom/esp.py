"""``esp`` of the emulated ESP32: what the firmware and the dht driver use."""

import _bridge


def osdebug(level, *args):
    pass


def dht_readinto(pin, buf):
    """One DHT bus transaction on ``pin`` into ``buf`` (5 bytes); OSError(ETIMEDOUT) if it does not answer."""
    pin_id = pin.id if hasattr(pin, "id") else pin
    data = _bridge.call("dht", pin=pin_id)
    for i in range(5):
        buf[i] = data[i]


def flash_size():
    return 4 * 1024 * 1024
