"""Stand-in for MicroPython's ``dht`` module, built on simulator.hardware.dht.

``dht.DHT22(pin)`` / ``dht.DHT11(pin)`` return MicroPythonDHTStandIn objects
whose physical model runs on the simulated clock (so the sensor's minimum read
interval and warm-up hold in simulated time) and follows sim.json:
``dht_failure_rate`` (share of reads that fail: checksum errors and timeouts)
``heat_c`` (degrees added to the modelled temperature: a heat spike) and
``dht_hang_ms`` (a read blocks this long: a wedged bus that stalls the loop).
"""

from __future__ import annotations

import time as _time

from simulator.hardware.dht import DHTModel, HeatedEnv, MicroPythonDHTStandIn
from simulator.micropython_standins import _simstate, utime
from simulator.sensors import make_sensor


class _LiveModel(DHTModel):
    """DHTModel whose failure rate follows sim.json at every read."""

    def read(self) -> bytearray:
        self.failure_rate = float(_simstate.setting("dht_failure_rate", 0.0))
        return super().read()


class _HangingDHT(MicroPythonDHTStandIn):
    def measure(self) -> None:
        hang = float(_simstate.setting("dht_hang_ms", 0))
        if hang > 0:
            utime.sleep_ms(hang)
        super().measure()


def _make(kind: str, pin: object) -> MicroPythonDHTStandIn:
    seed = int(_simstate.setting("seed", 1))
    env = HeatedEnv(make_sensor("climate", seed), lambda: float(_simstate.setting("heat_c", 0.0)))
    model = _LiveModel(kind, env=env, seed=seed, failure_rate=0.0, clock=utime.sim_seconds, env_time=_time.time)
    return _HangingDHT(pin, dht11=kind == "DHT11", model=model, sleep=utime.sleep)


def DHT22(pin: object) -> MicroPythonDHTStandIn:
    return _make("DHT22", pin)


def DHT11(pin: object) -> MicroPythonDHTStandIn:
    return _make("DHT11", pin)
