"""DS18B20 1-Wire thermometer over ``onewire`` + ``ds18x20`` (see sensors.py for the contract)."""

import ds18x20
import machine
import onewire
from clock import sleep_ms
from errors import SensorError

_EIO = 5
_ENODEV = 19
POWER_ON_VALUE = 85.0  # what the scratchpad holds before the first conversion


class DS18B20:
    METRICS = ("temperature",)
    RETRY_MS = 100
    CONVERT_MS = 750  # 12-bit conversion time

    def __init__(self, pin):
        self.pin = pin
        self.bus = ds18x20.DS18X20(onewire.OneWire(machine.Pin(pin)))
        self.rom = None

    def measure(self):
        """One conversion; SensorError if no device answers, the CRC fails or it reads 85.0."""
        if self.rom is None:
            roms = self.bus.scan()
            if not roms:
                raise SensorError(_ENODEV, "no DS18B20 found on pin " + str(self.pin))
            self.rom = roms[0]
        try:
            self.bus.convert_temp()
            sleep_ms(self.CONVERT_MS)
            value = self.bus.read_temp(self.rom)
        except OSError:
            raise
        except Exception as err:  # ds18x20 raises a plain Exception("CRC error")
            if "CRC" in str(err):
                raise SensorError(_EIO, "DS18B20 CRC error")
            raise
        if value == POWER_ON_VALUE:
            raise SensorError(_EIO, "DS18B20 returned its power-on value 85.0 (conversion did not run)")
        return {"temperature": round(value, 2)}
