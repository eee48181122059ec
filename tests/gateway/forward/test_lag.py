"""The forward lag during a real Mosquitto outage, on a whole gateway (host process, workers, forwarding worker).

A device keeps sending while the broker is stopped: ``edgewire_forward_lag_seconds`` must grow
(the oldest reading stored and not forwarded gets older), ``/healthz`` must say ``degraded``
(HTTP 200: the gateway still stores readings) once the lag passes ``forward_lag_degraded_s``,
and both must come back (lag 0, ``ok``) once the broker is back and the backlog is forwarded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.mosquitto import MosquittoServer
from tests.helpers.devices import GoodDevice
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until

LAG = 'edgewire_forward_lag_seconds{sink="mqtt"}'
ACKED = 'edgewire_forward_acked_total{sink="mqtt"}'
DEGRADED_S = 2.0


def test_the_lag_grows_and_healthz_degrades_while_mosquitto_is_down(tmp_path: Path) -> None:
    with MosquittoServer() as broker:
        gw = GatewayProcess(tmp_path, mqtt_url=broker.url, forward_lag_degraded_s=DEGRADED_S, workers=2)
        token = gw.register("LAG-1")
        gw.start()

        async def body() -> None:
            async with GoodDevice(gw.device_url, "LAG-1", token) as device:
                await until(lambda: gw.metrics().get(ACKED, 0) >= 5, timeout=30, what="readings forwarded")
                assert gw.health()[1]["status"] == "ok"
                await asyncio.to_thread(broker.stop, "term")
                acked = gw.metrics()[ACKED]
                stored_before = device.acked
                await until(lambda: gw.metrics()[LAG] > DEGRADED_S + 1, timeout=30, what="the lag growing")
                first = gw.metrics()[LAG]
                await until(lambda: gw.metrics()[LAG] > first + 1, timeout=30, what="the lag growing further")
                assert device.acked > stored_before  # still stored and acknowledged meanwhile
                assert gw.metrics()[ACKED] == acked  # nothing forwarded meanwhile
                status, report = gw.health()
                assert (status, report["status"]) == (200, "degraded"), report
                owner = next(w for w in report["workers"].values() if "forwarding" in w["checks"])
                forwarding = owner["checks"]["forwarding"]
                assert forwarding["state"] == "degraded" and forwarding["behind"] == ["mqtt"], forwarding
                assert forwarding["sinks"]["mqtt"]["lag_s"] > DEGRADED_S
                await asyncio.to_thread(broker.start)
                await until(lambda: gw.metrics()[LAG] < 1 and gw.metrics()[ACKED] >= acked + 10, timeout=60,
                            what="the backlog forwarded")
                await until(lambda: gw.health()[1]["status"] == "ok", timeout=30, what="healthz ok again")

        try:
            asyncio.run(body())
        finally:
            gw.stop()
