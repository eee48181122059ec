"""The Forwarder against a scripted sink and real SQLite storage: order, window, failures, leases, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.forward.forwarder import STANDBY, Forwarder
from gateway.forward.sink import ACKED, FAILED, REFUSED, Done, Sink
from gateway.storage.base import ReadingRow
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.storage import with_sqlite

T0 = 1_764_080_000_000


def reading(device: str, seq: int) -> ReadingRow:
    return ReadingRow(device, seq, T0 + seq, T0 + seq, {"temperature": 20.0 + seq % 10}, quality="ok")


class ScriptedSink(Sink):
    """Keeps what it is handed; acks at once unless told to hold, fail or refuse."""

    name = "test"

    def __init__(self) -> None:
        super().__init__()
        self.connected = True
        self.hold = False
        self.refuse: set[tuple[str, int]] = set()
        self.handed: list[tuple[str, int]] = []
        self.delivered: list[tuple[str, int]] = []
        self.waiting: list[tuple[ReadingRow, Done]] = []
        self.grew = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    @property
    def ready(self) -> bool:
        return self.connected

    def send(self, reading: ReadingRow, done: Done) -> None:
        key = (reading.device_id, reading.seq)
        self.handed.append(key)
        self.grew.set()
        if key in self.refuse:
            done(REFUSED)
        elif self.hold:
            self.waiting.append((reading, done))
        else:
            self.delivered.append(key)
            done(ACKED)

    def release(self, outcome: int = ACKED) -> None:
        waiting, self.waiting = self.waiting, []
        for row, done in waiting:
            if outcome == ACKED:
                self.delivered.append((row.device_id, row.seq))
            done(outcome)

    def set_connected(self, value: bool) -> None:
        self.connected = value
        self.changed()


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait until ``predicate()`` holds, checking after every event-loop turn (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def run(tmp_path: Path, body: Callable[[SQLiteStorage], Awaitable[Any]]) -> Any:
    return with_sqlite(tmp_path / "f.db", body, commit_interval_ms=0)


def test_the_forwarder_registers_with_its_sink_when_built(tmp_path: Path) -> None:
    """Wiring by constructor: a sink's change wakes its forwarder, with no attribute set from outside."""
    async def body(storage: SQLiteStorage) -> None:
        sink = ScriptedSink()
        fw = Forwarder(sink, storage, "gw1")
        assert not fw._event.is_set()
        sink.set_connected(False)
        assert fw._event.is_set()

    run(tmp_path, body)


def test_forwards_in_storage_order_and_resumes_after_a_restart(tmp_path: Path) -> None:
    async def first(storage: SQLiteStorage) -> list[tuple[str, int]]:
        sink = ScriptedSink()
        fw = Forwarder(sink, storage, "gw1", window=10, batch=4, save_s=0.0)
        task = asyncio.create_task(fw.run())
        await until(lambda: fw.cursor is not None)  # the sink starts at the end of the log
        for seq in range(1, 31):
            await storage.store([reading("A", seq), reading("B", seq)])
            fw.wake()
        await until(lambda: len(sink.delivered) == 60)
        await fw.close()
        await task
        cursors = await storage.sink_cursors()
        assert cursors[0].lease_until_ms == 0  # released at close
        assert fw.counters.acked == 60 and fw.counters.resent == 0
        await storage.store([reading("A", 31)])  # stored while no forwarder runs
        return sink.delivered

    delivered = run(tmp_path, first)
    assert delivered == [(d, s) for s in range(1, 31) for d in ("A", "B")]

    async def second(storage: SQLiteStorage) -> None:
        sink = ScriptedSink()
        fw = Forwarder(sink, storage, "gw1", window=10, batch=4)
        task = asyncio.create_task(fw.run())
        await until(lambda: sink.delivered == [("A", 31)])
        await fw.close()
        await task

    run(tmp_path, second)


def test_never_more_than_the_window_beyond_the_stored_cursor(tmp_path: Path) -> None:
    async def body(storage: SQLiteStorage) -> None:
        sink = ScriptedSink()
        sink.hold = True
        fw = Forwarder(sink, storage, "gw1", window=5, batch=3, save_s=0.0)
        task = asyncio.create_task(fw.run())
        await until(lambda: fw.cursor is not None)
        await storage.store([reading("A", seq) for seq in range(1, 13)])
        fw.wake()
        await until(lambda: len(sink.handed) == 5)
        for _ in range(50):  # woken again and again: with the window full it reads nothing more
            fw.wake()
            await asyncio.sleep(0)
        assert len(sink.handed) == 5 and fw.inflight == 5
        sink.release()
        await until(lambda: len(sink.handed) == 10)
        sink.hold = False
        sink.release()
        await until(lambda: len(sink.delivered) == 12)
        assert sink.delivered == [("A", seq) for seq in range(1, 13)]
        await fw.close()
        await task

    run(tmp_path, body)


def test_a_failure_goes_back_to_the_first_reading_not_acked(tmp_path: Path) -> None:
    async def body(storage: SQLiteStorage) -> None:
        sink = ScriptedSink()
        fw = Forwarder(sink, storage, "gw1", window=6, batch=6, save_s=60.0)
        task = asyncio.create_task(fw.run())
        await until(lambda: fw.cursor is not None)
        await storage.store([reading("A", seq) for seq in range(1, 4)])
        fw.wake()
        await until(lambda: len(sink.delivered) == 3)
        sink.hold = True
        await storage.store([reading("A", seq) for seq in range(4, 10)])
        fw.wake()
        await until(lambda: len(sink.waiting) == 6)  # the whole window in flight
        sink.set_connected(False)
        sink.release(FAILED)  # the connection dropped: none of 4-9 is known to have arrived
        sink.hold = False
        sink.set_connected(True)
        await until(lambda: ("A", 9) in sink.delivered)
        first = {key: sink.delivered.index(key) for key in reversed(sink.delivered)}
        assert sorted(first) == [("A", seq) for seq in range(1, 10)]  # nothing skipped
        assert sorted(first.values()) == [first[("A", seq)] for seq in range(1, 10)]  # first arrivals in order
        assert fw.counters.failures == 6 and fw.counters.resent == 6
        await fw.close()
        await task

    run(tmp_path, body)


def test_refused_and_expired_readings_are_counted_and_passed(tmp_path: Path) -> None:
    async def body(storage: SQLiteStorage) -> None:
        sink = ScriptedSink()
        sink.refuse = {("A", 2)}
        fw = Forwarder(sink, storage, "gw1", window=10, save_s=0.0)
        task = asyncio.create_task(fw.run())
        await until(lambda: fw.cursor is not None)
        old = ReadingRow("B", 1, 5, T0, {"temperature": 1.0})  # a device clock in 1970: retention takes it
        await storage.store([old])
        await storage.expire(T0 - 86_400_000, 0)
        await storage.store([reading("A", seq) for seq in range(1, 4)])
        fw.wake()
        await until(lambda: len(sink.delivered) == 2)
        assert sink.delivered == [("A", 1), ("A", 3)]
        await until(lambda: fw.counters.refused == 1 and fw.counters.expired == 1)
        await fw.close()
        await task

    run(tmp_path, body)


def test_one_instance_forwards_the_other_stands_by_and_takes_over(tmp_path: Path) -> None:
    async def body(storage: SQLiteStorage) -> None:
        one, two = ScriptedSink(), ScriptedSink()
        first = Forwarder(one, storage, "gw1", window=10, save_s=0.0, lease_s=0.6)
        task1 = asyncio.create_task(first.run())
        await until(lambda: first.cursor is not None)
        second = Forwarder(two, storage, "gw2", window=10, save_s=0.0, lease_s=0.6)
        task2 = asyncio.create_task(second.run())
        await until(lambda: second.state == STANDBY)
        await storage.store([reading("A", 1)])
        first.wake()
        await until(lambda: one.delivered == [("A", 1)])
        await first.close()  # releases the lease: gw2 takes over from the stored cursor
        await task1
        await storage.store([reading("A", 2)])
        await until(lambda: two.delivered == [("A", 2)])
        assert one.delivered == [("A", 1)]
        assert [c.owner for c in await storage.sink_cursors()] == ["gw2"]
        await second.close()
        await task2

    run(tmp_path, body)


def test_two_gateways_on_postgresql_forward_each_reading_once(postgres_dsn: str) -> None:
    """Two gateways share a PostgreSQL and both store readings concurrently; one forwards, the other
    stands by; when the first stops, the second goes on from the stored cursor. Nothing is skipped."""
    from gateway.storage.postgresql import PostgresStorage

    async def body() -> None:
        one = PostgresStorage(postgres_dsn, commit_interval_ms=1)
        two = PostgresStorage(postgres_dsn, commit_interval_ms=1)
        await one.open()
        await two.open()
        sink_one, sink_two = ScriptedSink(), ScriptedSink()
        first = Forwarder(sink_one, one, "gw1/1", window=50, save_s=0.0, lease_s=1.0, poll_s=0.05)
        second = Forwarder(sink_two, two, "gw2/1", window=50, save_s=0.0, lease_s=1.0, poll_s=0.05)
        await one.register_sink("test", 0)
        await two.register_sink("test", 0)
        task1 = asyncio.create_task(first.run())
        await until(lambda: first.cursor is not None)
        task2 = asyncio.create_task(second.run())
        await until(lambda: second.state == STANDBY)

        async def write(storage: PostgresStorage, device: str, count: int) -> None:
            for seq in range(1, count + 1):
                await storage.store([reading(device, seq)])

        try:
            await asyncio.gather(write(one, "A", 60), write(two, "B", 60))
            await until(lambda: len(set(sink_one.delivered)) == 120)
            await first.close()
            await task1
            await asyncio.gather(write(one, "A2", 30), write(two, "B2", 30))
            await until(lambda: len(set(sink_two.delivered)) == 60)
            delivered = sink_one.delivered + sink_two.delivered
            assert set(delivered) == {(d, s) for d, n in (("A", 60), ("B", 60), ("A2", 30), ("B2", 30))
                                      for s in range(1, n + 1)}
            for device in ("A", "B"):  # each device's readings in seq order
                seqs = [s for d, s in sink_one.delivered if d == device]
                assert seqs == sorted(seqs)
            assert not set(sink_two.delivered) & set(sink_one.delivered)  # handed over at the cursor
        finally:
            await second.close()
            await task2
            await one.close()
            await two.close()

    asyncio.run(body())


def test_the_lag_counts_readings_stored_while_the_sink_is_away(tmp_path: Path) -> None:
    """The lag is the age of the oldest reading stored and not yet forwarded: it grows while the
    sink is away (nothing handed over), and is 0 again once the sink has caught up."""
    now = [T0 / 1000 + 100.0]

    async def body(storage: SQLiteStorage) -> None:
        sink = ScriptedSink()
        fw = Forwarder(sink, storage, "gw1", window=10, batch=4, save_s=0.0, poll_s=0.01, clock=lambda: now[0])
        task = asyncio.create_task(fw.run())
        await until(lambda: fw.cursor is not None)
        sink.set_connected(False)
        await storage.store([reading("A", 1), reading("A", 2)])  # received at T0 + 1, T0 + 2 (ms)
        fw.wake()
        await until(lambda: fw.lag_s() > 0)
        assert sink.handed == [] and fw.lag_s() == pytest.approx(99.999)  # the oldest stored, none handed over
        now[0] += 30.0
        assert fw.lag_s() == pytest.approx(129.999) and fw.stats()["lag_s"] == 129.999  # grows while away
        sink.set_connected(True)
        await until(lambda: len(sink.delivered) == 2 and fw.lag_s() == 0.0)
        assert fw.stats()["lag_s"] == 0
        await fw.close()
        await task

    run(tmp_path, body)
