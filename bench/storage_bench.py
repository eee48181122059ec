"""SQLiteStorage write throughput (rows/s), bounded in count.

Two shapes:
- ``batch``: one caller stores batches of ``--batch`` readings (2 metrics each), awaiting each.
- ``frames``: ``--devices`` concurrent callers each store frames of ``--frame`` readings,
  the gateway's pattern; the writer groups them into shared commits.

Usage: .venv/bin/python bench/storage_bench.py [--rows 50000] [--batch 1000] [--sync FULL NORMAL]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.storage.base import ReadingRow
from gateway.storage.sqlite import SQLiteStorage

T0 = 1_764_080_000_000


def readings(device: str, first: int, count: int) -> list[ReadingRow]:
    return [ReadingRow(device, s, T0 + s, T0 + s + 3, {"temperature": 20.0 + (s % 50) / 10, "humidity": 45.5},
                       boot="b", uptime_ms=s * 1000, quality="ok") for s in range(first, first + count)]


async def bench_batch(db: Path, sync: str, rows: int, batch: int, interval_ms: float) -> tuple[float, int]:
    storage = SQLiteStorage(db, synchronous=sync, commit_interval_ms=interval_ms)
    await storage.open()
    batches = [readings(f"B-{i % 100}", 1 + (i // 100) * batch, batch) for i in range(rows // batch)]
    start = time.perf_counter()
    for item in batches:
        await storage.store(item)
    elapsed = time.perf_counter() - start
    commits = storage.commits
    assert await storage.count_readings() == len(batches) * batch
    await storage.close()
    return len(batches) * batch / elapsed, commits


async def bench_frames(db: Path, sync: str, rows: int, devices: int, frame: int,
                       interval_ms: float) -> tuple[float, int]:
    storage = SQLiteStorage(db, synchronous=sync, commit_interval_ms=interval_ms)
    await storage.open()
    per_device = rows // devices // frame

    async def device(name: str) -> None:
        for i in range(per_device):
            await storage.store(readings(name, 1 + i * frame, frame))

    start = time.perf_counter()
    await asyncio.gather(*(device(f"F-{d}") for d in range(devices)))
    elapsed = time.perf_counter() - start
    total = devices * per_device * frame
    commits = storage.commits
    assert await storage.count_readings() == total
    await storage.close()
    return total / elapsed, commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000, help="readings per run (bounded)")
    parser.add_argument("--batch", type=int, default=1000, help="readings per store() in the batch shape")
    parser.add_argument("--devices", type=int, default=200, help="concurrent callers in the frames shape")
    parser.add_argument("--frame", type=int, default=20, help="readings per store() in the frames shape")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="commit_interval_ms")
    parser.add_argument("--sync", nargs="+", default=["FULL", "NORMAL"])
    parser.add_argument("--dir", default=None, help="where to put the database (default: a temp dir)")
    args = parser.parse_args()
    rows = min(args.rows, 1_000_000)
    print(f"rows/run={rows} metrics/reading=2 commit_interval_ms={args.interval_ms:g}")
    print(f"{'shape':28} {'synchronous':11} {'rows/s':>10} {'commits':>8}")
    for sync in args.sync:
        for shape in ("batch", "frames"):
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                db = Path(tmp) / "bench.db"
                if shape == "batch":
                    rate, commits = asyncio.run(bench_batch(db, sync, rows, args.batch, args.interval_ms))
                    label = f"batch {args.batch}"
                else:
                    rate, commits = asyncio.run(bench_frames(db, sync, rows, args.devices, args.frame,
                                                             args.interval_ms))
                    label = f"frames {args.devices}x{args.frame}"
            print(f"{label:28} {sync:11} {rate:10,.0f} {commits:8}")


if __name__ == "__main__":
    main()
