"""The batched store-and-ack path (gateway/flusher.py) without sockets: a storage whose commits the
test completes by hand, connections that record what they were sent."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway.auth import Identity
from gateway.device_conn import DeviceConnection
from gateway.errors import StorageError
from gateway.fanout import Listeners
from gateway.flusher import Flusher
from gateway.metrics import Metrics
from gateway.storage.base import ReadingRow
from protocol import wire
from protocol.gateway import GatewaySession
from tests.helpers.waiting import until


class FakeStorage:
    """Each ``store`` call waits until the test settles its future; a commit returns the rows new
    to it, as the storage contract says (the first row of a key, never one committed before)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[ReadingRow], asyncio.Future[list[ReadingRow]]]] = []
        self.refuse: set[str] = set()  # devices whose rows fail even when stored on their own
        self.stored: set[tuple[str, int]] = set()

    async def store(self, rows: list[ReadingRow]) -> list[ReadingRow]:
        future: asyncio.Future[list[ReadingRow]] = asyncio.get_running_loop().create_future()
        self.calls.append((list(rows), future))
        if self.refuse & {row.device_id for row in rows}:
            raise StorageError("readings not stored: refused (injected)")
        return await future

    def commit(self, index: int) -> None:
        new = []
        for row in self.calls[index][0]:
            if (row.device_id, row.seq) not in self.stored:
                self.stored.add((row.device_id, row.seq))
                new.append(row)
        self.calls[index][1].set_result(new)

    def fail(self, index: int) -> None:
        self.calls[index][1].set_exception(StorageError("disk I/O error (injected)"))


class FakeConn:
    """A device connection as the flusher sees it (gateway.flusher.AckTarget)."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.session = GatewaySession()
        self.session.accept(device_id, 0, 0)
        self.closing = False
        self.failed = False
        self.tail: asyncio.Future[None] | None = None
        self.acking: asyncio.Future[None] | None = None
        self.sent: list[int] = []  # ack seqs, in the order they went out
        self.closed: list[str] = []
        self.buffered = False  # bytes wait in its write buffer: not writable
        self.gate: asyncio.Event | None = None  # set: each send waits for it (a device that does not read)
        self.broken = False  # send raises ConnectionClosed

    def writable(self) -> bool:
        return not self.buffered

    async def send(self, frame: str) -> None:
        if self.broken:
            raise ConnectionClosed(None, None)
        if self.gate is not None:
            await self.gate.wait()
            self.gate.clear()
        msg = json.loads(frame)
        assert msg["t"] == "ack"
        self.sent.append(msg["seq"])

    async def close(self, code: str, message: str) -> None:
        self.closed.append(code)


def rows(conn: FakeConn, first: int, last: int) -> list[ReadingRow]:
    return [ReadingRow(conn.device_id, seq, 1000 + seq, 2000 + seq, {"temperature": 20.0})
            for seq in range(first, last + 1)]


def add(flusher: Flusher, conn: FakeConn, first: int, last: int) -> None:
    """A data frame with seqs first..last (last < first: a duplicate frame acking ``first - 1``)."""
    flusher.add(conn, rows(conn, first, last), max(last, first - 1))


async def settle(timeout: float = 5.0) -> None:
    """Return once the event loop is idle: every other task waits on something only the test can
    complete (a commit, a gate), so nothing further happens by itself. No timers are involved;
    the loop's ready queue is the event (asyncio has no public idle hook)."""
    loop = asyncio.get_running_loop()
    ready = loop._ready  # type: ignore[attr-defined]
    end = loop.time() + timeout
    await asyncio.sleep(0)
    while ready:  # something else can still run: let it, then look again
        if loop.time() >= end:
            raise AssertionError(f"the event loop was still busy after {timeout:g} s")
        await asyncio.sleep(0)


Seen = list[list[tuple[str, int]]]  # the batches the commit listener got: (device, seq) of each row


def run(body: Callable[[Flusher, FakeStorage, Metrics, Seen], Awaitable[None]]) -> None:
    async def main() -> None:
        storage = FakeStorage()
        metrics = Metrics()
        seen: Seen = []
        listeners = Listeners(metrics)
        listeners.add("test", lambda batch: seen.append([(r.device_id, r.seq) for r in batch]))
        flusher = Flusher(storage, metrics, listeners)
        await body(flusher, storage, metrics, seen)

    asyncio.run(main())


def test_one_store_per_iteration_and_acks_only_after_the_commit() -> None:
    async def body(flusher: Flusher, storage: FakeStorage, metrics: Metrics, seen: Seen) -> None:
        a, b, c = FakeConn("a"), FakeConn("b"), FakeConn("c")
        add(flusher, a, 1, 2)
        add(flusher, b, 1, 1)
        add(flusher, a, 3, 3)  # a second frame of a in the same iteration
        add(flusher, c, 1, 0)  # a duplicate frame: no rows, still acked (seq 0 here)
        await settle()
        assert len(storage.calls) == 1
        assert [(r.device_id, r.seq) for r in storage.calls[0][0]] == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]
        assert a.sent == b.sent == c.sent == []  # nothing before the commit
        storage.commit(0)
        await settle()
        assert (a.sent, b.sent, c.sent) == ([3], [1], [0])  # one ack per connection: its highest seq
        assert metrics.counters.readings_stored == 4
        assert metrics.commit_latency.count == 1 and metrics.ack_latency.count == 4  # one per frame
        assert seen == [[("a", 1), ("a", 2), ("b", 1), ("a", 3)]]  # the committed rows, once
        assert a.tail is not None and a.tail.done()

    run(body)


def test_one_store_at_a_time_and_the_next_batch_collects_meanwhile() -> None:
    async def body(flusher: Flusher, storage: FakeStorage, metrics: Metrics, seen: Seen) -> None:
        a, b = FakeConn("a"), FakeConn("b")
        add(flusher, a, 1, 1)
        await settle()
        add(flusher, a, 2, 2)
        add(flusher, b, 1, 1)
        await settle()
        add(flusher, a, 3, 2)  # a duplicate of seq 2: no rows, acked with its batch
        await settle()
        assert len(storage.calls) == 1  # the next flush waits for the store in progress, collecting frames
        storage.commit(0)
        await settle()
        assert a.sent == [1] and b.sent == []
        assert [(r.device_id, r.seq) for r in storage.calls[1][0]] == [("a", 2), ("b", 1)]  # one group commit
        storage.commit(1)
        await settle()
        assert a.sent == [1, 2] and b.sent == [1]  # one ack per connection and batch, its highest target
        assert seen == [[("a", 1)], [("a", 2), ("b", 1)]]  # in flush order; the duplicate frame adds nothing

    run(body)


def test_a_failed_store_closes_exactly_its_connections_and_acks_them_no_more() -> None:
    async def body(flusher: Flusher, storage: FakeStorage, metrics: Metrics, seen: Seen) -> None:
        a, b, c = FakeConn("a"), FakeConn("b"), FakeConn("c")
        add(flusher, a, 1, 1)
        add(flusher, b, 1, 1)
        await settle()
        add(flusher, a, 2, 2)  # already received when the first store fails: never stored, never acked
        add(flusher, c, 1, 1)
        await settle()
        storage.fail(0)
        await until(lambda: len(storage.calls) == 3, what="a and b stored apart")
        storage.fail(1)
        storage.fail(2)  # the database is down: both fail on their own too
        await until(lambda: len(storage.calls) == 4, what="the next batch's store")
        # Nothing more of a is stored: had seq 2 been committed without seq 1, a's next welcome would
        # say last_seq 2 and the device would drop seq 1, never stored.
        assert [(r.device_id, r.seq) for r in storage.calls[3][0]] == [("c", 1)]
        storage.commit(3)
        await settle()
        assert a.closed == [wire.E_STORAGE] and b.closed == [wire.E_STORAGE] and c.closed == []
        assert a.sent == [] and b.sent == [] and c.sent == [1]
        assert a.failed and a.closing and not c.failed
        assert metrics.counters.storage_errors == 2
        assert metrics.counters.readings_stored == 1
        assert seen == [[("c", 1)]]  # what the second flush committed; nothing of the failed stores
        add(flusher, a, 3, 2)  # a duplicate frame after the failure: still no ack
        await settle()
        assert a.sent == [] and a.closed == [wire.E_STORAGE]

    run(body)


def test_rows_the_storage_refuses_fail_only_their_connection() -> None:
    async def body(flusher: Flusher, storage: FakeStorage, metrics: Metrics, seen: Seen) -> None:
        good, bad = FakeConn("good"), FakeConn("bad")
        storage.refuse = {"bad"}
        add(flusher, good, 1, 2)
        add(flusher, bad, 1, 1)
        await until(lambda: len(storage.calls) == 3, what="the rows stored apart")
        assert [r.device_id for r in storage.calls[1][0]] == ["good", "good"]
        storage.commit(1)
        await settle()
        assert good.sent == [2] and good.closed == []
        assert bad.sent == [] and bad.closed == [wire.E_STORAGE]
        assert metrics.counters.readings_stored == 2 and metrics.counters.storage_errors == 1
        assert seen == [[("good", 1), ("good", 2)]]  # never the refused rows

    run(body)


def test_a_slow_device_does_not_hold_up_the_others_and_gets_its_newest_ack() -> None:
    async def body(flusher: Flusher, storage: FakeStorage, metrics: Metrics, seen: Seen) -> None:
        slow, fast = FakeConn("slow"), FakeConn("fast")
        slow.buffered = True
        slow.gate = asyncio.Event()
        add(flusher, slow, 1, 1)
        add(flusher, fast, 1, 1)
        await settle()
        storage.commit(0)
        await settle()
        assert fast.sent == [1] and slow.sent == []  # slow's ack waits in its own sender
        for seq in (2, 3):
            add(flusher, slow, seq, seq)
            add(flusher, fast, seq, seq)
            await settle()
            storage.commit(len(storage.calls) - 1)
            await settle()
        assert fast.sent == [1, 2, 3] and slow.sent == []
        assert slow.tail is not None and slow.tail.done()
        assert slow.acking is not None and not slow.acking.done()  # a drain still waits for it
        slow.gate.set()
        await until(lambda: slow.sent == [1], what="the first ack")
        slow.gate.set()
        await until(lambda: slow.acking is not None and slow.acking.done(), what="the sender to finish")
        assert slow.sent == [1, 3]  # cumulative: the newest target replaced seq 2
        assert metrics.ack_latency.count == 6
        slow.buffered, slow.gate = False, None  # it reads again
        add(flusher, slow, 4, 4)
        await settle()
        storage.commit(len(storage.calls) - 1)
        await settle()
        assert slow.sent == [1, 3, 4]  # sent inline again

    run(body)


def test_a_closed_connection_does_not_affect_the_others_acks() -> None:
    async def body(flusher: Flusher, storage: FakeStorage, metrics: Metrics, seen: Seen) -> None:
        gone, a = FakeConn("gone"), FakeConn("a")
        gone.broken = True
        add(flusher, gone, 1, 1)
        add(flusher, a, 1, 1)
        await settle()
        storage.commit(0)
        await settle()
        assert a.sent == [1] and gone.sent == [] and gone.closed == []
        assert metrics.ack_latency.count == 1  # only acks that went out

    run(body)


def test_drain_waits_for_the_flush_and_the_connections_own_sender() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = DeviceConnection(cast(Any, None), GatewaySession(), Identity("d"), 0)
        flush: asyncio.Future[None] = loop.create_future()
        sender: asyncio.Future[None] = loop.create_future()
        conn.tail, conn.acking = flush, sender
        drained = asyncio.ensure_future(conn.drain())
        await settle()
        flush.set_result(None)
        await settle()
        assert not drained.done()
        sender.set_result(None)
        await asyncio.wait_for(drained, 5)

    asyncio.run(main())


class FakeTransport:
    def __init__(self, buffered: int = 0, closing: bool = False) -> None:
        self.buffered = buffered
        self.closing = closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


def test_a_connection_is_writable_only_open_with_an_empty_write_buffer() -> None:
    async def main() -> list[bool]:
        ws = SimpleNamespace(state=State.OPEN, transport=FakeTransport())
        conn = DeviceConnection(cast(Any, ws), GatewaySession(), Identity("d"), 0)
        seen = [conn.writable()]
        ws.transport = FakeTransport(buffered=20)  # a device that does not read its acks
        seen.append(conn.writable())
        ws.transport = FakeTransport(closing=True)
        seen.append(conn.writable())
        ws.transport, ws.state = FakeTransport(), State.CLOSING
        seen.append(conn.writable())
        return seen

    assert asyncio.run(main()) == [True, False, False, False]


def test_listeners_get_a_resend_after_a_failed_commit_once() -> None:
    """A store fails: its rows reach no listener; the device resends them on a new connection and
    they are handed on once, when that commit succeeds."""

    async def body(flusher: Flusher, storage: FakeStorage, metrics: Metrics, seen: Seen) -> None:
        first = FakeConn("a")
        add(flusher, first, 1, 3)
        await settle()
        storage.fail(0)
        await settle()
        assert first.closed == [wire.E_STORAGE] and seen == []
        again = FakeConn("a")  # the device reconnects and resends everything not acked
        add(flusher, again, 1, 4)
        await settle()
        storage.commit(1)
        await settle()
        assert again.sent == [4]
        assert seen == [[("a", 1), ("a", 2), ("a", 3), ("a", 4)]]

    run(body)


def test_a_resend_of_stored_readings_is_acked_but_not_handed_on_again() -> None:
    """The commit succeeded but the ack was lost: the device resends seqs already stored (here on a
    connection whose welcome did not know them yet). They are acked; no listener sees them twice."""

    async def body(flusher: Flusher, storage: FakeStorage, metrics: Metrics, seen: Seen) -> None:
        first = FakeConn("a")
        add(flusher, first, 1, 3)
        await settle()
        storage.commit(0)
        await settle()
        again = FakeConn("a")
        add(flusher, again, 2, 5)
        await settle()
        storage.commit(1)
        await settle()
        assert again.sent == [5]
        assert seen == [[("a", 1), ("a", 2), ("a", 3)], [("a", 4), ("a", 5)]]
        add(flusher, again, 1, 3)  # all stored already: acked in its turn, no listener call
        await settle()
        storage.commit(2)
        await settle()
        assert again.sent == [5, 5] and len(seen) == 2  # (acks never go back)

    run(body)


def test_a_listener_that_raises_stops_neither_the_others_nor_the_acks(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        storage = FakeStorage()
        metrics = Metrics()
        now = [0.0]
        listeners = Listeners(metrics, clock=lambda: now[0])
        seen: Seen = []

        def broken(rows: list[ReadingRow]) -> None:
            raise RuntimeError("a bug in a consumer")

        listeners.add("broken", broken)
        listeners.add("after", lambda rows: seen.append([(r.device_id, r.seq) for r in rows]))
        flusher = Flusher(storage, metrics, listeners)
        a = FakeConn("a")
        for seq in (1, 2, 3):
            add(flusher, a, seq, seq)
            await settle()
            storage.commit(seq - 1)
            await settle()
        assert a.sent == [1, 2, 3] and a.closed == []
        assert seen == [[("a", 1)], [("a", 2)], [("a", 3)]]
        assert metrics.listener_errors == {"broken": 3, "after": 0}
        page = metrics.render([], [], [], "asyncio").decode()
        assert 'edgewire_commit_listener_errors_total{listener="broken"} 3' in page
        assert 'edgewire_commit_listener_errors_total{listener="after"} 0' in page

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    failures = [r for r in caplog.records if "commit_listener_failed" in r.getMessage()]
    assert len(failures) == 1  # logged once a minute, counted every time
    fields = failures[0].fields  # type: ignore[attr-defined]
    assert fields["listener"] == "broken" and "a bug in a consumer" in fields["error"]


def test_a_listener_name_is_registered_once() -> None:
    listeners = Listeners(Metrics())
    listeners.add("dashboard", lambda rows: None)
    with pytest.raises(ValueError, match="dashboard"):
        listeners.add("dashboard", lambda rows: None)
    assert listeners.names == ["dashboard"]
