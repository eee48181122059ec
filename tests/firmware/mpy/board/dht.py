"""MicroPython-side stand-in for ``dht``: a DHT22 whose every 7th read fails its checksum."""

import random


class DHT22:
    def __init__(self, pin):
        self.n = 0
        self.t = 215
        self.h = 402

    def measure(self):
        self.n += 1
        if self.n % 7 == 0:
            raise Exception("checksum error")
        self.t += random.getrandbits(3) - 3
        self.h += random.getrandbits(3) - 3

    def temperature(self):
        return self.t * 0.1

    def humidity(self):
        return max(0, min(1000, self.h)) * 0.1


DHT11 = DHT22
