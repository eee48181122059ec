"""Stand-in for MicroPython's ``ds18x20`` with the sensor's failure modes.

read_temp() before any convert_temp() returns the power-on value 85.0; a CRC
error (plain ``Exception("CRC error")``, as micropython-lib raises) happens at
sim.json ``ds18b20_crc_rate``; temperature follows the climate model + ``heat_c``.
"""

from __future__ import annotations

import random
import time as _time

from simulator.micropython_standins import _simstate
from simulator.micropython_standins.onewire import OneWire
from simulator.sensors import make_sensor


class DS18X20:
    def __init__(self, bus: OneWire) -> None:
        self.bus = bus
        seed = int(_simstate.setting("seed", 1))
        self.rng = random.Random(seed)
        self.env = make_sensor("temperature", seed)
        self.converted = False

    def scan(self) -> list[bytearray]:
        return [rom for rom in self.bus.scan() if rom[0] in (0x10, 0x22, 0x28)]

    def convert_temp(self) -> None:
        self.converted = True

    def read_temp(self, rom: bytearray) -> float:
        if not self.converted:
            return 85.0
        if self.rng.random() < float(_simstate.setting("ds18b20_crc_rate", 0.0)):
            raise Exception("CRC error")
        value = self.env.sample(_time.time())["temperature"] + float(_simstate.setting("heat_c", 0.0))
        return round(value * 16) / 16  # 12-bit resolution
