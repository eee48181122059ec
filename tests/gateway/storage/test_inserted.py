"""Conformance: ``store`` returns exactly the rows it newly inserted (the rows the gateway hands to
its listeners after the commit, gateway/fanout.py): never a duplicate, within a call, across calls,
across concurrent callers and across storage instances sharing a database."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

from gateway.storage.base import ReadingRow, Storage
from tests.gateway.storage.conftest import Backend, row


def keys(rows: list[ReadingRow]) -> list[tuple[str, int]]:
    return [(r.device_id, r.seq) for r in rows]


def test_store_returns_the_rows_it_inserted(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        first = [row("A", i) for i in range(1, 6)]
        inserted = await s.store(first)
        assert inserted == first and all(a is b for a, b in zip(inserted, first, strict=True))
        assert await s.store([]) == []
        # An overlapping resend: only the new seqs, in the caller's order.
        resend = [row("A", i, temperature=99.0) for i in range(3, 9)]
        assert keys(await s.store(resend)) == [("A", 6), ("A", 7), ("A", 8)]
        # The same key twice in one call: the first occurrence, once.
        twice = [row("A", 9, temperature=1.0), row("B", 1), row("A", 9, temperature=2.0), row("B", 1)]
        inserted = await s.store(twice)
        assert inserted == [twice[0], twice[1]] and inserted[0] is twice[0]
        # The same row object twice: returned once.
        same = row("C", 1)
        assert await s.store([same, same]) == [same]
        # Interleaved devices with a late, never stored seq below the watermark: it is new.
        await s.store([row("D", 5)])
        mixed = [row("D", 4), row("A", 2), row("E", 1), row("D", 5), row("D", 6)]
        assert keys(await s.store(mixed)) == [("D", 4), ("E", 1), ("D", 6)]
        # A resend of everything: nothing.
        assert await s.store([row("A", i) for i in range(1, 10)] + [row("D", 4)]) == []
        assert await s.count_readings() == 9 + 1 + 1 + 3 + 1  # A, B, C, D, E

    backend.run(body)


def test_the_return_value_is_a_plain_picklable_list(backend: Backend) -> None:
    """The commit may run in another process: what store returns crosses a pipe."""

    async def body(s: Storage) -> None:
        inserted = await s.store([row("A", 1), row("A", 2)])
        assert type(inserted) is list
        assert pickle.loads(pickle.dumps(inserted)) == inserted

    backend.run(body)


def test_concurrent_callers_of_one_group_commit_share_the_keys_out(backend: Backend) -> None:
    """Callers in one group commit offering the same keys: each key goes to exactly one of them,
    the one that queued first, and nothing already stored goes to anyone."""
    callers = 6

    async def before(s: Storage) -> None:
        await s.store([row("A", i) for i in range(1, 4)])

    async def body(s: Any) -> None:
        calls = [[row("A", i) for i in range(c + 1, c + 11)] for c in range(callers)]  # 1..10, 2..11, ...
        results = await asyncio.gather(*(s.store(rows) for rows in calls))
        assert s.commits == 1  # one group commit for all the callers
        returned = [key for inserted in results for key in keys(inserted)]
        assert sorted(returned) == [("A", i) for i in range(4, callers + 10)]  # each new key once
        assert keys(results[0]) == [("A", i) for i in range(4, 11)]  # the first caller's new rows
        for rows, inserted in zip(calls, results, strict=True):
            assert all(any(r is mine for mine in rows) for r in inserted)  # its own row objects
        assert await s.count_readings() == callers + 9

    backend.run(before)
    backend.run(body, commit_interval_ms=60_000, max_batch_rows=callers * 10)


def test_concurrent_writers_return_every_stored_row_once(backend: Backend) -> None:
    """Two storage instances (two gateways on one database) with concurrent callers storing
    overlapping ranges: across all their calls, every stored reading is returned exactly once."""
    devices, top = 4, 90

    async def main() -> None:
        first, second = backend.make(commit_interval_ms=2), backend.make(commit_interval_ms=3)
        await first.open()
        await second.open()
        try:
            calls = []
            for d in range(devices):
                for start in range(1, top, 15):
                    stop = min(top, start + 29)  # each range overlaps the next one by half
                    for writer in (first, second):
                        calls.append(writer.store([row(f"X{d}", i) for i in range(start, stop + 1)]))
            calls.reverse()  # later ranges first: lower seqs arrive below the watermark
            results = await asyncio.gather(*calls)
            returned = [key for inserted in results for key in keys(inserted)]
            assert len(returned) == len(set(returned))
            assert sorted(returned) == sorted((f"X{d}", i) for d in range(devices) for i in range(1, top + 1))
            assert await first.count_readings() == devices * top
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())
