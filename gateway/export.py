"""History and readings as CSV or JSON Lines: ``GET /v1/history.csv`` and ``python -m gateway export``.

Two shapes, each written by one function here so the HTTP API and the CLI give the same bytes:

- buckets (``write_buckets``): one line per downsampled bucket of one metric, the rows of
  ``GET /v1/history``: CSV columns ``t,time,min,avg,max,count``; JSONL objects
  ``{"t", "time", "min", "avg", "max", "count"}``.
- readings (``write_readings``): every stored reading of a device in a time range, paged
  from storage (constant memory): CSV columns ``device_id,seq,time_ms,time,received_ms,
  metric,value,quality``, one line per metric value; JSONL one object per reading with
  ``device_id, seq, time_ms, received_ms, boot, device_ts, uptime_ms, quality, metrics``.

``time`` is ISO 8601 UTC with milliseconds. Values are written in full precision.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from gateway.storage.base import Bucket, ReadingHistory

FORMATS = ("csv", "jsonl")
BUCKET_COLUMNS = ("t", "time", "min", "avg", "max", "count")
READING_COLUMNS = ("device_id", "seq", "time_ms", "time", "received_ms", "metric", "value", "quality")
PAGE = 5000


def iso(ms: int) -> str:
    """``2025-11-25T14:13:20.000Z``"""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_buckets(buckets: Iterable[Bucket], fmt: str, out: TextIO) -> int:
    """Write ``buckets`` as CSV (with a header line) or JSONL; return how many."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(BUCKET_COLUMNS)
        for b in buckets:
            writer.writerow((b.t, iso(b.t), b.min, b.avg, b.max, b.count))
            count += 1
    else:
        for b in buckets:
            out.write(orjson.dumps({"t": b.t, "time": iso(b.t), "min": b.min, "avg": b.avg, "max": b.max,
                                    "count": b.count}).decode() + "\n")
            count += 1
    return count


def buckets_csv(buckets: Iterable[Bucket]) -> bytes:
    out = io.StringIO()
    write_buckets(buckets, "csv", out)
    return out.getvalue().encode()


async def write_readings(storage: ReadingHistory, device_id: str, start_ms: int, end_ms: int, fmt: str, out: TextIO,
                         metric: str | None = None) -> int:
    """Write the device's readings with start_ms <= time_ms < end_ms, oldest first; return how many."""
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(READING_COLUMNS)
    count = 0
    after: tuple[int, int] | None = None
    while True:
        page = await storage.readings(device_id, start_ms, end_ms, after=after, limit=PAGE)
        for r in page:
            metrics = r.metrics if metric is None else {k: v for k, v in r.metrics.items() if k == metric}
            if not metrics:
                continue
            count += 1
            if writer is not None:
                stamp = iso(r.time_ms)
                for name, value in metrics.items():
                    writer.writerow((r.device_id, r.seq, r.time_ms, stamp, r.received_ms, name, value, r.quality or ""))
            else:
                item: dict[str, Any] = {"device_id": r.device_id, "seq": r.seq, "time_ms": r.time_ms,
                                        "received_ms": r.received_ms, "boot": r.boot, "device_ts": r.device_ts,
                                        "uptime_ms": r.uptime_ms, "quality": r.quality, "metrics": metrics}
                out.write(orjson.dumps(item).decode() + "\n")
        if len(page) < PAGE:
            return count
        after = (page[-1].time_ms, page[-1].seq)
