"""Conformance: readings are stored exactly once per (device, seq), acknowledged only after commit,
group-committed, kept across restarts; derived state (watermark, latest values) follows them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.errors import StorageError
from gateway.storage.base import ReadingRow, Storage
from tests.gateway.storage.conftest import T0, Backend, rollup_count, row


def test_store_and_read_back(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        await s.store([row("A", i) for i in range(1, 11)])
        assert await s.seqs("A") == list(range(1, 11))
        assert await s.last_seq("A") == 10
        assert await s.last_seq("nobody") == 0
        assert await s.count_readings("A") == 10
        assert await s.count_readings() == 10
        assert await s.latest("A") == {"temperature": (30.0, T0 + 10_000), "humidity": (40.0, T0 + 10_000)}
        stored = await s.readings("A", 0, 2**62)
        assert [r.seq for r in stored] == list(range(1, 11))
        assert stored[0] == row("A", 1)  # every field round-trips

    backend.run(body)


def test_duplicates_ignored_across_and_within_batches(backend: Backend) -> None:
    async def body(s: Any) -> None:
        await s.store([row("A", i) for i in range(1, 6)])
        # Overlapping resend: seqs 3..8, where 3..5 carry different times and values.
        resend = [row("A", i, time_ms=5_000 + i, temperature=99.0) for i in range(3, 6)]
        await s.store(resend + [row("A", i) for i in range(6, 9)])
        # The same seq twice in one batch: the first wins.
        await s.store([row("A", 9, temperature=1.0), row("A", 9, time_ms=7, temperature=2.0), row("B", 1)])
        # A resend of everything, below the watermark, changes nothing.
        await s.store([row("A", i, temperature=-1.0) for i in range(1, 10)])
        assert await s.seqs("A") == list(range(1, 10))
        assert await s.seqs("B") == [1]
        temps = await s.history("A", "temperature", 0, 2**62)
        assert len(temps) == 9  # one value per stored reading, none from duplicates
        assert 99.0 not in [v for _, v in temps] and -1.0 not in [v for _, v in temps]
        assert (T0 + 9_000, 1.0) in temps
        assert s.rows_inserted == 10
        # Rollups count each stored reading once.
        assert await rollup_count(s, "A", "temperature", "1h") == 9
        assert await rollup_count(s, "A", "temperature", "5m") == 9

    backend.run(body)


def test_one_call_holds_rows_of_several_devices(backend: Backend) -> None:
    """The gateway stores the frames of one event-loop iteration in one call (gateway/flusher.py):
    rows of several devices, interleaved, resends among them; each device keeps its own watermark."""

    async def body(s: Any) -> None:
        await s.store([row("B", 1), row("B", 2)])
        await s.store([row("A", 1), row("B", 2, temperature=99.0), row("C", 7), row("A", 2), row("B", 3),
                       row("C", 8), row("A", 3)])
        assert (await s.seqs("A"), await s.seqs("B"), await s.seqs("C")) == ([1, 2, 3], [1, 2, 3], [7, 8])
        assert [await s.last_seq(d) for d in "ABC"] == [3, 3, 8]
        assert 99.0 not in [v for _, v in await s.history("B", "temperature", 0, 2**62)]
        assert await rollup_count(s, "B", "temperature", "5m") == 3
        assert s.rows_inserted == 8  # 2 + 6: the resend of B 2 is not inserted

    backend.run(body)


def test_concurrent_stores_are_group_committed(backend: Backend) -> None:
    callers, per_call = 40, 25

    async def body(s: Any) -> None:
        await asyncio.gather(*(s.store([row(f"D{c}", i) for i in range(1, per_call + 1)])
                               for c in range(callers)))
        assert await s.count_readings() == callers * per_call
        for c in range(callers):
            assert await s.seqs(f"D{c}") == list(range(1, per_call + 1))
        # The batch closes when it holds max_batch_rows rows (the long interval only bounds the wait).
        assert s.commits == 1

    backend.run(body, commit_interval_ms=60_000, max_batch_rows=callers * per_call)


def test_exactly_once_across_concurrent_writers(backend: Backend) -> None:
    """Two storage instances (two gateways on one database), each with concurrent callers storing
    overlapping, out-of-order ranges of the same devices: every seq once, rollups counted once."""
    devices, top = 6, 120

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
            await asyncio.gather(*calls)
            for d in range(devices):
                assert await first.seqs(f"X{d}") == list(range(1, top + 1))
                assert await second.last_seq(f"X{d}") == top
                assert await rollup_count(first, f"X{d}", "humidity", "1h") == top
                assert await rollup_count(second, f"X{d}", "humidity", "5m") == top
            assert first.rows_inserted + second.rows_inserted == devices * top  # type: ignore[attr-defined]
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())


def test_store_returns_only_after_commit(backend: Backend) -> None:
    """When store() returns, another connection (another gateway) already sees the rows."""

    async def main() -> None:
        writer, reader = backend.make(commit_interval_ms=20), backend.make()
        await writer.open()
        await reader.open()
        try:
            for n in range(1, 6):
                await writer.store([row("A", n * 10 + i) for i in range(10)])
                assert await reader.count_readings("A") == n * 10
                assert await reader.last_seq("A") == n * 10 + 9
        finally:
            await writer.close()
            await reader.close()

    asyncio.run(main())


def test_close_commits_what_is_queued(backend: Backend) -> None:
    async def main() -> list[Any]:
        s = backend.make(commit_interval_ms=60_000)
        await s.open()
        tasks = [asyncio.ensure_future(s.store([row(f"D{c}", i) for i in range(1, 11)])) for c in range(5)]
        await asyncio.sleep(0)  # the tasks queue their rows
        await s.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await s.close()  # idempotent
        with pytest.raises(StorageError):
            await s.store([row("late", 1)])
        return results

    assert [len(inserted) for inserted in asyncio.run(main())] == [10] * 5  # each call's new rows

    async def check(s: Storage) -> None:
        assert await s.count_readings() == 50

    backend.run(check)


def test_restart_keeps_everything(backend: Backend) -> None:
    from gateway.storage.base import AlertHistoryRow, AlertRow, DeviceRecord

    async def write(s: Storage) -> None:
        await s.store([row("A", i) for i in range(1, 101)])
        await s.put_device(DeviceRecord("A", True, b"\x01" * 32, ["10.0.0.0/8"], "lab", 5, 6))
        await s.save_alerts([(AlertRow(0, "A", "temperature", "t_hot", 1000, 31.5),
                              AlertHistoryRow(0, 1000, "raised"))])

    async def read(s: Storage) -> None:
        assert await s.seqs("A") == list(range(1, 101))
        assert await s.last_seq("A") == 100
        assert (await s.latest("A"))["temperature"] == (120.0, T0 + 100_000)
        assert await s.get_device("A") == DeviceRecord("A", True, b"\x01" * 32, ["10.0.0.0/8"], "lab", 5, 6)
        assert [a.value for a in await s.active_alerts()] == [31.5]
        state = (await s.device_states())["A"]
        assert (state.last_seq, state.last_seen_ms) == (100, T0 + 100_005)
        assert await rollup_count(s, "A", "temperature", "5m") == 100
        await s.store([row("A", i) for i in range(95, 106)])  # the watermark survived too
        assert await s.seqs("A") == list(range(1, 106))

    backend.run(write)
    backend.run(read)


def test_one_instance_can_be_reopened(backend: Backend) -> None:
    async def main() -> None:
        s = backend.make()
        await s.open()
        await s.store([row("A", 1)])
        await s.store([])
        await s.close()
        with pytest.raises(StorageError, match="closed"):
            await s.last_seq("A")
        await s.open()
        try:
            await s.store([row("A", 2)])
            assert await s.seqs("A") == [1, 2]
        finally:
            await s.close()

    asyncio.run(main())


def test_latest_is_newest_time_per_metric_and_history_is_a_half_open_range(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        await s.store([
            row("A", 1, time_ms=3000, temperature=3.0),
            row("A", 2, time_ms=1000, temperature=1.0, co2=400.0),  # late arrival of an older reading
            row("A", 3, time_ms=2000, temperature=2.0),
            row("A", 4, time_ms=4000, humidity=44.0),
            row("B", 1, time_ms=9000, temperature=-5.0),
        ])
        await s.store([row("A", 5, time_ms=3000, temperature=3.5)])  # same time, higher seq: newer
        assert await s.latest("A") == {"temperature": (3.5, 3000), "co2": (400.0, 1000), "humidity": (44.0, 4000)}
        assert await s.latest("B") == {"temperature": (-5.0, 9000)}
        assert await s.latest("C") == {}
        assert await s.history("A", "temperature", 0, 10_000) == [(1000, 1.0), (2000, 2.0), (3000, 3.0),
                                                                  (3000, 3.5)]
        assert await s.history("A", "temperature", 1000, 3000) == [(1000, 1.0), (2000, 2.0)]
        assert await s.history("A", "temperature", 0, 10_000, limit=1) == [(1000, 1.0)]
        assert await s.history("A", "pressure", 0, 10_000) == []
        states = await s.device_states()
        assert set(states) == {"A", "B"}
        assert states["A"].latest == await s.latest("A")
        assert (states["A"].last_seq, states["A"].last_seen_ms) == (5, 4005)  # highest seq, latest receive time

    backend.run(body)


def test_bad_rows_fail_only_their_caller(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        results = await asyncio.gather(
            s.store([row("good", 1)]),
            s.store([row("nan", 1, temperature=float("nan"))]),
            s.store([row("inf", 1, temperature=float("-inf"))]),
            s.store([ReadingRow("obj", 1, 1, 1, {"temperature": object()})]),  # type: ignore[dict-item]
            s.store([row("good", 2)]),
            return_exceptions=True)
        assert results[0] == [row("good", 1)] and results[4] == [row("good", 2)]
        assert all(isinstance(r, StorageError) for r in results[1:4])
        assert await s.seqs("good") == [1, 2]
        assert await s.seqs("nan") == [] and await s.seqs("obj") == [] and await s.seqs("inf") == []
        assert await s.last_seq("nan") == 0

    backend.run(body, commit_interval_ms=50)


def test_readings_page_through_a_range_in_time_order(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        # Times out of seq order, two readings at the same time.
        await s.store([row("A", i, time_ms=T0 + (i * 7919) % 50 * 100) for i in range(1, 51)])
        await s.store([row("A", 51, time_ms=T0 + 4900)])
        pages: list[list[ReadingRow]] = []
        after = None
        while True:
            page = await s.readings("A", T0, T0 + 4900, after=after, limit=7)
            if not page:
                break
            pages.append(page)
            after = (page[-1].time_ms, page[-1].seq)
        flat = [r for page in pages for r in page]
        keys = [(r.time_ms, r.seq) for r in flat]
        assert keys == sorted(keys) and len(keys) == len(set(keys))
        assert len(flat) == 49  # [T0, T0 + 4900): time T0 + 4900 (two readings) is outside
        assert all(len(page) == 7 for page in pages)

    backend.run(body)
