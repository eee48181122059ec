"""The rule preview's time (gateway/alerts/preview.py) for a week of one-minute readings.

A throwaway SQLite file holds 10,080 readings of one device (temperature and humidity, one a
minute for 7 days, with a daily swing and a few spikes); each rule below is previewed over the
week ``--runs`` times, as the console's rule_preview runs it (the readings paged out of storage,
then through an AlertEngine holding only the draft rule). Printed: the median wall time per
preview, and its part per reading. A timed rule (no_data) also runs the engine's tick every 2 s
of the replayed week (302,400 ticks).

Usage: .venv/bin/python -m bench.preview_bench [--runs 5] [--days 7]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from pathlib import Path

from gateway.alerts import preview
from gateway.storage.base import ReadingRow
from gateway.storage.sqlite import SQLiteStorage

T0 = 1_764_000_000_000
MIN = 60_000
RULES = {
    "above (for_s, hysteresis)": {"metric": "temperature", "above": 27.5, "hysteresis": 1.0, "for_s": 600},
    "rate": {"type": "rate", "metric": "temperature", "per_minute": 2.0},
    "anomaly": {"type": "anomaly", "metric": "temperature"},
    "no_data (timed)": {"type": "no_data", "min_s": 600},
}


async def run(days: int, runs: int) -> None:
    count = days * 1440
    with tempfile.TemporaryDirectory() as tmp:
        storage = SQLiteStorage(Path(tmp) / "bench.db")
        await storage.open()
        try:
            rows = []
            for i in range(count):
                value = 22 + 6 * math.sin(2 * math.pi * i / 1440) + (9 if i % 1777 < 4 else 0)
                rows.append(ReadingRow("B-1", i + 1, T0 + i * MIN, T0 + i * MIN,
                                       {"temperature": round(value, 2), "humidity": 40.0}))
            for start in range(0, count, 2000):
                await storage.store(rows[start:start + 2000])
            print(f"{count:,} readings of one device over {days} days; median of {runs} runs")
            for name, rule in RULES.items():
                times = []
                for _ in range(runs):
                    began = time.perf_counter()
                    answer = await preview.preview(storage, rule, "B-1", T0, T0 + count * MIN)
                    times.append(time.perf_counter() - began)
                    assert answer["readings"] == count
                median = statistics.median(times)
                print(f"  {name:28} {median * 1000:8.1f} ms  ({median / count * 1e6:5.1f} us/reading, "
                      f"{answer['alerts']} alerts)")
        finally:
            await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(run(args.days, args.runs))


if __name__ == "__main__":
    main()
