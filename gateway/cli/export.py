"""``python -m gateway export DEVICE --from ... --to ... --format csv|jsonl``: a device's history to a file.

Reads the gateway's storage directly (SQLite or PostgreSQL, chosen as for ``devices``), also
while the gateway runs. Without ``--points``: every stored reading in the range, paged
(constant memory). With ``--metric M --points N``: the same downsampled buckets as
``GET /v1/history.csv``. Shapes and columns: gateway/export.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from gateway import history
from gateway.cli.common import one_line_errors
from gateway.errors import RequestError
from gateway.export import FORMATS, write_buckets, write_readings
from gateway.storage.backends import cli_config, open_storage, storage_arguments
from gateway.storage.base import DAY_MS
from protocol import wire

_MS = re.compile(r"[0-9]{1,16}")


def add_export_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "export", parents=[storage_arguments()],
        help="write a device's readings (or its downsampled history) as CSV or JSON Lines",
        description="Export stored readings of one device in [--from, --to). Times are Unix ms or ISO 8601 "
                    "(UTC unless they name a zone).")
    p.add_argument("device_id")
    p.add_argument("--from", dest="start", default=None, help="start (default: 24 hours before --to)")
    p.add_argument("--to", dest="end", default=None, help="end, exclusive (default: now)")
    p.add_argument("--format", choices=FORMATS, default="csv", help="csv (default) or jsonl")
    p.add_argument("--metric", default=None, help="only this metric (required with --points)")
    p.add_argument("--points", type=int, default=None,
                   help=f"downsample to at most N buckets (1-{history.MAX_POINTS}), as GET /v1/history.csv")
    p.add_argument("--output", "-o", default=None, help="file to write, created private (default: stdout)")


def parse_time(value: str, option: str) -> int:
    """Unix ms, or an ISO 8601 date/time (UTC if no zone) -> Unix ms."""
    if _MS.fullmatch(value):
        return int(value)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(option, f"{value[:40]!r} is neither Unix ms nor an ISO 8601 time "
                                   "(e.g. 2025-11-25T14:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    ms = int(when.timestamp() * 1000)
    if ms < 0:
        raise RequestError(option, "must not be before 1970")
    return ms


def run_export(args: argparse.Namespace) -> int:
    """Run a parsed ``export`` command: 0 on success, 2 with one ``error:`` line on stderr otherwise."""
    return one_line_errors(lambda: asyncio.run(_export(args)))


async def _export(args: argparse.Namespace) -> int:
    if not wire.valid_device_id(args.device_id):
        raise RequestError("DEVICE", f"{args.device_id[:80]!r} is not a device id")
    end = parse_time(args.end, "--to") if args.end else int(time.time() * 1000)
    start = parse_time(args.start, "--from") if args.start else max(0, end - DAY_MS)
    if start >= end:
        raise RequestError("--from", "must be before --to")
    if args.metric is not None and not wire.valid_metric_name(args.metric):
        raise RequestError("--metric", f"{args.metric[:40]!r} is not a metric name")
    if args.points is not None:
        if args.metric is None:
            raise RequestError("--points", "needs --metric: buckets are of one metric")
        if not 1 <= args.points <= history.MAX_POINTS:
            raise RequestError("--points", f"must be 1..{history.MAX_POINTS}")
    config = cli_config(args)
    if config.storage_kind != "postgresql" and not config.database.exists():
        raise RequestError("--data-dir", f"no database at {config.database}; check --data-dir/--db/--storage")
    storage = open_storage(config, commit_interval_ms=0)
    await storage.open()
    try:
        if await storage.get_device(args.device_id) is None and not await storage.last_seq(args.device_id):
            raise RequestError("DEVICE", f"no device {args.device_id} in {config.storage_display} storage")
        if args.metric is not None:
            await history.check_metric(storage, args.device_id, args.metric, "--metric")
        with _output(args.output) as out:
            if args.points is not None:
                plan = history.plan(start, end, args.points, int(time.time() * 1000),
                                    config.readings_retention_days * DAY_MS)
                count = write_buckets(await history.buckets(storage, args.device_id, args.metric, plan),
                                      args.format, out)
                what = f"{count} buckets of {args.metric} ({plan.source}, step {plan.step_ms} ms)"
            else:
                count = await write_readings(storage, args.device_id, start, end, args.format, out, args.metric)
                what = f"{count} readings"
    finally:
        await storage.close()
    print(f"exported {what} of {args.device_id}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as err:
        raise RequestError("--output", f"cannot write {path}: {err.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        yield handle
