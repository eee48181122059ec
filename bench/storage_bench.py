"""Storage write throughput and commit latency, SQLite next to PostgreSQL (docs/performance.md).

Shapes, each on a fresh database, bounded in rows:
- ``batch``: one caller stores batches of ``--batch`` readings (one device per batch, readings
  1 s apart, 2 metrics), awaiting each: a bulk loader or a device flushing its backlog.
  ``commit_interval_ms`` is 0: a caller that brings 1,000 rows gains nothing from waiting.
- ``frames``: ``--devices`` concurrent callers each store frames of ``--frame`` readings, the
  gateway's pattern; the writer groups them into shared commits (``--interval-ms``, default 5).

Every store goes through the full write path of the contract: duplicate check against the
watermark, insert, both rollup tiers, latest values, device state, commit (SQLite
``synchronous=FULL``; PostgreSQL ``synchronous_commit=on``, fsync on). Latency is per
``store()`` call, from the call to its return (= when a gateway could ack). ``cpu us/row`` is
this process's CPU (the event loop and, for SQLite, its writer thread) per row; the
PostgreSQL server's own CPU is not in it. ``bytes/row`` is what the database grew by.

``--drivers`` also times raw binary COPY of ``--batch``-row batches into a day-partitioned
table with asyncpg and with psycopg 3 (if installed): the measurement behind the choice of
asyncpg.

PostgreSQL: a throwaway server (services.postgres) unless ``--dsn`` names one.

Usage: .venv/bin/python -m bench.storage_bench [--rows 100000] [--backends sqlite postgresql] [--drivers]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.storage.base import ReadingRow, Storage
from gateway.storage.postgresql import PostgresStorage
from gateway.storage.sqlite import SQLiteStorage
from services.postgres import PostgresServer

T0 = 1_764_080_000_000
MAX_ROWS = 1_000_000


def readings(device: str, first: int, count: int) -> list[ReadingRow]:
    return [ReadingRow(device, s, T0 + s * 1000, T0 + s * 1000 + 3,
                       {"temperature": 20.0 + (s % 50) / 10, "humidity": 45.5 + (s % 7)},
                       boot="b", uptime_ms=s * 1000, quality="ok") for s in range(first, first + count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _size(storage: Storage, target: str) -> int:
    if isinstance(storage, PostgresStorage):
        rows = await storage._fetch("SELECT pg_database_size(current_database())")
        return int(rows[0][0])
    return sum(p.stat().st_size for p in Path(target).parent.glob(Path(target).name + "*"))


async def run_shape(make: Callable[[float], Storage], target: str, shape: str, rows: int, batch: int,
                    devices: int, frame: int, interval_ms: float) -> dict[str, Any]:
    storage = make(0.0 if shape == "batch" else interval_ms)
    await storage.open()
    empty = await _size(storage, target)
    latencies: list[float] = []

    async def timed(items: list[ReadingRow]) -> None:
        started = time.perf_counter()
        await storage.store(items)
        latencies.append(time.perf_counter() - started)

    if shape == "batch":
        work = [readings(f"B-{i % 100}", 1 + (i // 100) * batch, batch) for i in range(rows // batch)]
        total = len(work) * batch
        cpu0, start = time.process_time(), time.perf_counter()
        for item in work:
            await timed(item)
    else:
        per_device = rows // devices // frame
        total = devices * per_device * frame

        async def device(name: str) -> None:
            for i in range(per_device):
                await timed(readings(name, 1 + i * frame, frame))

        cpu0, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(device(f"F-{d}") for d in range(devices)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    commits = int(getattr(storage, "commits", 0))
    stored = await storage.count_readings()
    if stored != total:
        raise SystemExit(f"{shape}: stored {stored} of {total} readings")
    await storage.close()
    await storage.open()  # SQLite checkpoints its WAL on close: measure the settled size
    grown = await _size(storage, target) - empty
    await storage.close()
    return {"shape": shape, "rows": total, "rows_per_s": round(total / elapsed), "commits": commits,
            "rows_per_commit": round(total / max(1, commits), 1),
            "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            "cpu_us_per_row": round(1e6 * cpu / total, 2), "bytes_per_row": round(grown / total),
            "interval_ms": 0.0 if shape == "batch" else interval_ms}


_DRIVER_DDL = """
DROP TABLE IF EXISTS copy_bench;
CREATE TABLE copy_bench (device_id text NOT NULL, seq bigint NOT NULL, time_ms bigint NOT NULL,
    received_ms bigint NOT NULL, boot text, device_ts bigint, uptime_ms bigint, quality text, metrics jsonb NOT NULL)
    PARTITION BY RANGE (time_ms);
CREATE INDEX ON copy_bench (device_id, seq);
CREATE INDEX ON copy_bench (device_id, time_ms);
CREATE TABLE copy_bench_all PARTITION OF copy_bench DEFAULT;
"""
_COLUMNS = ("device_id", "seq", "time_ms", "received_ms", "boot", "device_ts", "uptime_ms", "quality", "metrics")


async def driver_copy(dsn: str, driver: str, rows: int, batch: int) -> dict[str, Any]:
    """Raw binary COPY, one transaction per batch: the driver's own cost, no Edgewire logic."""
    import orjson

    data = [[(r.device_id, r.seq, r.time_ms, r.received_ms, r.boot, r.device_ts, r.uptime_ms, r.quality,
              orjson.dumps(r.metrics).decode()) for r in readings(f"C-{i % 100}", 1 + i * batch, batch)]
            for i in range(rows // batch)]
    if driver == "asyncpg":
        import asyncpg

        conn = await asyncpg.connect(dsn)
        await conn.execute(_DRIVER_DDL)
        cpu0, start = time.process_time(), time.perf_counter()
        for records in data:
            async with conn.transaction():
                await conn.copy_records_to_table("copy_bench", records=records, columns=_COLUMNS)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        await conn.close()
    else:
        import psycopg

        aconn = await psycopg.AsyncConnection.connect(dsn)
        await aconn.execute(_DRIVER_DDL)
        await aconn.commit()
        types = ["text", "int8", "int8", "int8", "text", "int8", "int8", "text", "jsonb"]
        cpu0, start = time.process_time(), time.perf_counter()
        for records in data:
            sql = f"COPY copy_bench ({', '.join(_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
            async with aconn.transaction(), aconn.cursor() as cur, cur.copy(sql) as copy:
                copy.set_types(types)
                for record in records:
                    await copy.write_row(record)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        await aconn.close()
    total = len(data) * batch
    return {"driver": driver, "rows": total, "rows_per_s": round(total / elapsed),
            "cpu_us_per_row": round(1e6 * cpu / total, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help=f"readings per run (at most {MAX_ROWS:,})")
    parser.add_argument("--batch", type=int, default=1000, help="readings per store() in the batch shape")
    parser.add_argument("--devices", type=int, default=200, help="concurrent callers in the frames shape")
    parser.add_argument("--frame", type=int, default=20, help="readings per store() in the frames shape")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="commit_interval_ms of the frames shape")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"],
                        choices=["sqlite", "postgresql"])
    parser.add_argument("--dsn", default=None, help="use this PostgreSQL (its database is written to!)")
    parser.add_argument("--drivers", action="store_true", help="also time raw COPY: asyncpg vs psycopg 3")
    parser.add_argument("--dir", default=None, help="where SQLite files go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    rows = min(args.rows, MAX_ROWS)
    load = os.getloadavg()
    print(f"rows/run={rows} metrics/reading=2 cpus={os.cpu_count()} load={load[0]:.2f},{load[1]:.2f},{load[2]:.2f} "
          f"python={platform.python_version()}")
    results: list[dict[str, Any]] = []
    server: PostgresServer | None = None
    try:
        if ("postgresql" in args.backends or args.drivers) and args.dsn is None:
            server = PostgresServer()
            server.start()
        header = (f"{'backend':11} {'shape':16} {'rows/s':>9} {'commits':>8} {'rows/commit':>11} {'p50 ms':>8} "
                  f"{'p99 ms':>8} {'cpu us/row':>10} {'bytes/row':>9}")
        print(header)
        for backend in args.backends:
            for shape in ("batch", "frames"):
                label = f"{args.batch} x 1" if shape == "batch" else f"{args.devices} x {args.frame}"
                with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                    if backend == "sqlite":
                        target = str(Path(tmp) / "bench.db")

                        def make(interval: float, target: str = target) -> Storage:
                            return SQLiteStorage(target, commit_interval_ms=interval)
                    else:
                        if server is not None:
                            target = server.create_database(f"bench_{shape}_{int(time.time())}")
                        else:
                            target = str(args.dsn)

                        def make(interval: float, target: str = target) -> Storage:
                            return PostgresStorage(target, commit_interval_ms=interval, clock=lambda: T0 / 1000)
                    result = asyncio.run(run_shape(make, target, shape, rows, args.batch, args.devices, args.frame,
                                                   args.interval_ms))
                result["backend"] = backend
                results.append(result)
                print(f"{backend:11} {shape + ' ' + label:16} {result['rows_per_s']:>9,} {result['commits']:>8} "
                      f"{result['rows_per_commit']:>11} {result['p50_ms']:>8} {result['p99_ms']:>8} "
                      f"{result['cpu_us_per_row']:>10} {result['bytes_per_row']:>9}", flush=True)
        if args.drivers:
            dsn = server.create_database(f"drivers_{int(time.time())}") if server is not None else str(args.dsn)
            print(f"\n{'driver':11} {'raw COPY':16} {'rows/s':>9} {'cpu us/row':>10}")
            for driver in ("asyncpg", "psycopg"):
                try:
                    result = asyncio.run(driver_copy(dsn, driver, rows, args.batch))
                except ImportError:
                    print(f"{driver:11} skipped: not installed (pip install 'psycopg[binary]')")
                    continue
                results.append(result)
                print(f"{driver:11} {f'{args.batch} x 1':16} {result['rows_per_s']:>9,} "
                      f"{result['cpu_us_per_row']:>10}", flush=True)
    finally:
        if server is not None:
            server.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "rows": rows, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
