"""``onewire`` of the emulated ESP32: the bus on a pin, as seen by the ds18x20 driver.

Devices on the bus are the board's world (world.json ``ds18b20``): one DS18B20 per bus, or none.
"""

import _bridge


class OneWireError(Exception):
    pass


class OneWire:
    def __init__(self, pin):
        self.pin = pin.id if hasattr(pin, "id") else pin

    def reset(self, required=False):
        present = bool(_bridge.call("onewire", pin=self.pin, fn="scan"))
        if required and not present:
            raise OneWireError
        return present

    def scan(self):
        return [bytearray(rom) for rom in _bridge.call("onewire", pin=self.pin, fn="scan")]
