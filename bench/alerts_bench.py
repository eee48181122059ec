"""The alert engine's CPU per reading at fleet size (docs/performance.md), without network or storage.

Readings of ``--devices`` devices (2 metrics each, temperature and humidity, one reading per
device per round, ``--rounds`` rounds ``--interval-s`` apart, default 60 s) go through ``AlertEngine.reading`` as the
gateway calls it, in three passes over the same pre-built readings:

- ``loop``: the same loop calling a function that does nothing (the harness's own cost);
- ``no rules``: the engine with an empty rule set (per-reading upkeep: the device's record);
- ``rule set``: the engine with the realistic set below (9 rules, 5 on temperature);
- with ``--per-rule``, each rule alone (its cost above the engine without rules).

``us/reading`` is this process's CPU time (``time.process_time``) per reading of a pass, and
``engine us/reading`` is that minus the ``loop`` pass. About 1 % of the devices run hot and
1 % of readings are "retried", so alerts are raised and stored during the run (through an
in-memory storage that answers at once: storage costs are not in the figures). Also timed:
one ``tick`` (the no_data scan of every device), one ``save_baselines`` (JSON of every
learned series) and the resident memory the engine's per-series state added.

Usage: .venv/bin/python -m bench.alerts_bench [--devices 10000] [--rounds 30] [--interval-s 60] [--per-rule]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import resource
import time
from typing import Any

from gateway.alerts.engine import AlertEngine
from gateway.alerts.rules import parse_rules
from gateway.storage.base import AlertHistoryRow, AlertRow, BaselineRow, DeviceRecord, StoredRule

T0 = 1_764_080_000_000
MAX_DEVICES = 200_000
MAX_ROUNDS = 1_000

RULES: list[dict[str, Any]] = [
    {"id": "hot", "metric": "temperature", "above": 30, "hysteresis": 1, "for_s": 60},
    {"id": "frost", "metric": "temperature", "below": 2, "hysteresis": 1},
    {"id": "humid", "metric": "humidity", "above": 85, "hysteresis": 3},
    {"id": "heating_fast", "type": "rate", "metric": "temperature", "per_minute": 2.0, "window_s": 600},
    {"id": "temperature_odd", "type": "anomaly", "metric": "temperature", "z": 5},
    {"id": "will_overheat", "type": "predictive", "metric": "temperature", "above": 35, "window_s": 1800},
    {"id": "humidity_stuck", "type": "stuck", "metric": "humidity", "window_s": 3600},
    {"id": "offline", "type": "no_data", "intervals": 5},
    {"id": "sensor_health", "type": "health"},
]


class MemoryStorage:
    """The alert engine's part of storage (AlertStorage), answering at once (no storage cost in the figures)."""

    def __init__(self) -> None:
        self.next_id = 1
        self.saved = 0

    async def save_alerts(self, changes: list[tuple[AlertRow, AlertHistoryRow]]) -> list[int]:
        ids = []
        for row, _ in changes:
            if row.alert_id == 0:
                row.alert_id = self.next_id
                self.next_id += 1
            ids.append(row.alert_id)
        return ids

    async def save_baselines(self, rows: list[BaselineRow]) -> None:
        self.saved += len(rows)

    async def alert_rules(self) -> list[Any]:
        return []

    async def load_baselines(self) -> list[Any]:
        return []

    async def active_alerts(self, limit: int | None = None) -> list[Any]:
        return []

    async def alerts(self, device_id: str | None = None, limit: int = 100, before_id: int | None = None,
                     state: str | None = None) -> list[AlertRow]:
        return []

    async def alert(self, alert_id: int) -> AlertRow | None:
        return None

    async def alert_history(self, alert_id: int, limit: int = 1000) -> list[AlertHistoryRow]:
        return []

    async def put_alert_rule(self, rule: StoredRule) -> None:
        return None

    async def delete_baselines(self, rule_id: str | None = None, device_id: str | None = None) -> int:
        return 0

    async def list_devices(self) -> list[DeviceRecord]:
        return []


def build_readings(devices: int, rounds: int, interval_ms: int = 60_000,
                   seed: int = 7) -> list[list[tuple[str, dict[str, float], int, str]]]:
    """Per round, one reading per device: (device, metrics, time, quality)."""
    rng = random.Random(seed)
    ids = [f"D-{i:05d}" for i in range(devices)]
    hot = set(rng.sample(range(devices), max(1, devices // 100)))
    out = []
    for r in range(rounds):
        batch = []
        for i, device in enumerate(ids):
            t = T0 + r * interval_ms + (i * 37) % interval_ms
            base = 34.0 if i in hot else 21.0 + 3 * math.sin(i + r / 30)
            metrics = {"temperature": round(base + rng.gauss(0, 0.2), 2),
                       "humidity": round(55.0 + 10 * math.sin(i) + rng.gauss(0, 1.0), 1)}
            batch.append((device, metrics, t, "retried" if rng.random() < 0.01 else "ok"))
        out.append(batch)
    return out


def timed(engine_reading: Any, rounds: list[list[tuple[str, dict[str, float], int, str]]]) -> float:
    gc.collect()
    start = time.process_time()
    for batch in rounds:
        for device, metrics, t, quality in batch:
            engine_reading(device, metrics, t, t, quality)
    return time.process_time() - start


def rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


async def run(devices: int, rounds: int, with_rules: bool = False, interval_s: float = 60.0) -> dict[str, Any]:
    interval_ms = int(interval_s * 1000)
    readings = build_readings(devices, rounds, interval_ms)
    n = devices * rounds

    def nothing(device: str, metrics: dict[str, float], t: int, received: int, quality: str) -> None:
        return None

    loop_s = timed(nothing, readings)
    bare = AlertEngine(MemoryStorage(), [])
    bare_s = timed(bare.reading, readings)

    storage = MemoryStorage()
    engine = AlertEngine(storage, parse_rules(RULES), clock=lambda: T0 / 1000)
    writer = asyncio.get_running_loop().create_task(engine.writer.run())
    before = rss_kib()
    rules_s = timed(engine.reading, readings)
    after = rss_kib()
    await engine.writer.flush(60)
    start = time.process_time()
    engine.tick(T0 + rounds * interval_ms)
    tick_ms = (time.process_time() - start) * 1000
    start = time.process_time()
    saved = await engine.save_baselines()
    save_ms = (time.process_time() - start) * 1000
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    stats = engine.stats()
    per_rule = {}
    if with_rules:
        for spec in parse_rules(RULES):
            alone = AlertEngine(MemoryStorage(), [spec], clock=lambda: T0 / 1000)
            task = asyncio.get_running_loop().create_task(alone.writer.run())
            per_rule[spec["id"]] = round((timed(alone.reading, readings) - bare_s) * 1e6 / n, 3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    per = 1e6 / n
    return {
        "schema": "edgewire-alerts-bench/1", "devices": devices, "rounds": rounds, "interval_s": interval_s,
        "readings": n,
        "rules": len(RULES), "python": platform.python_version(), "load_average": os.getloadavg()[0],
        "loop_us_per_reading": round(loop_s * per, 3),
        "no_rules_us_per_reading": round(bare_s * per, 3),
        "rule_set_us_per_reading": round(rules_s * per, 3),
        "engine_us_per_reading": round((rules_s - loop_s) * per, 3),
        "alerts_raised": stats["raised"], "alerts_open": sum(stats["open_by_state"].values()),
        "tick_ms": round(tick_ms, 2), "save_baselines_ms": round(save_ms, 1), "baseline_rows": saved,
        "state_rss_kib": after - before, "state_bytes_per_device": round((after - before) * 1024 / devices),
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "per_rule_us_per_reading": per_rule,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30, help="readings per device")
    parser.add_argument("--interval-s", type=float, default=60.0, help="time between a device's readings")
    parser.add_argument("--per-rule", action="store_true",
                        help="also time each rule alone (us per reading above the engine without rules)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not 1 <= args.devices <= MAX_DEVICES or not 1 <= args.rounds <= MAX_ROUNDS or not 1 <= args.interval_s <= 3600:
        parser.error(f"--devices 1..{MAX_DEVICES}, --rounds 1..{MAX_ROUNDS}, --interval-s 1..3600")
    result = asyncio.run(run(args.devices, args.rounds, args.per_rule, args.interval_s))
    for key, value in result.items():
        print(f"{key:28} {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
