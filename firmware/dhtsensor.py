"""DHT22 / DHT11 driver over MicroPython's ``dht`` module (see sensors.py for the contract)."""

import dht
import machine
from errors import SensorError

_EIO = 5


class DHT22:
    METRICS = ("temperature", "humidity")
    RETRY_MS = 2000  # the sensor answers at most once per 2 s

    def __init__(self, pin):
        self.dev = self._make(machine.Pin(pin))

    def _make(self, pin):
        return dht.DHT22(pin)

    def measure(self):
        """One read; OSError on timeout, SensorError on a checksum error."""
        try:
            self.dev.measure()
        except OSError:
            raise
        except Exception as err:  # dht.py raises a plain Exception("checksum error")
            if "checksum" in str(err):
                raise SensorError(_EIO, "DHT checksum error")
            raise
        return {"temperature": round(self.dev.temperature(), 1), "humidity": round(self.dev.humidity(), 1)}


class DHT11(DHT22):
    RETRY_MS = 1000  # once per second

    def _make(self, pin):
        return dht.DHT11(pin)
