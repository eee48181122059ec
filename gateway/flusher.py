"""Store and acknowledge data frames in batches: per event-loop iteration, one Task and one
``storage.store()`` call for every frame that arrived in it, then one ack per connection.

DeviceSessions hands each accepted data frame to ``Flusher.add`` (no I/O there). The first frame
of an iteration starts a flush task; the frames added before it runs join it. The flush stores
all their rows in one call (the storage group-commits it with other callers' work), then sends
each connection one ack, for its highest seq in the batch.

The rules it keeps (docs/protocol.md section 5):

- An ack goes out only after the rows it covers are committed. One flush stores at a time: the
  next batch goes on collecting frames while the previous store runs (a group commit), and each
  flush sends its acks only after the previous flush has sent its own, so a connection's acks
  go out in increasing order, and an ack never runs ahead of an earlier, unfinished store.
- A failed store closes exactly the connections whose rows it held, with storage_unavailable
  (1013), and no later ack goes to them: an ack is cumulative and would claim the failed rows.
  Nothing those connections sent after the failed rows is stored either: had a later flush
  committed seq 2 of a device whose seq 1 failed, its next welcome would say last_seq 2 and the
  device would drop seq 1, never stored. (That is why stores do not overlap.)
  When a batch of several connections fails, each connection's rows are stored again on their
  own (``store`` is idempotent), so rows the storage refuses close only their own connection.
- A frame whose readings were all stored already (no rows) is acknowledged in its turn.
- One slow device never holds up the acks of the others (see ``_ack``).

After its acks, a flush hands the rows its store really inserted (what ``store`` returns: no
duplicate, nothing of a failed store) to the commit listeners (gateway/fanout.py): the
dashboard, the alert rules, the forwarders. One call per flush, in flush order, so every
listener sees each stored reading once, after its commit, and each device's readings in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Protocol

from websockets.exceptions import ConnectionClosed

from gateway.fanout import Listeners
from gateway.logs import log
from gateway.metrics import Metrics
from gateway.storage.base import ReadingRow, ReadingWriter
from gateway.storage.isolation import commit_apart
from gateway.supervisor import spawn
from protocol import wire
from protocol.gateway import GatewaySession

STORAGE_CLOSE_MESSAGE = "storage unavailable; reconnect later"


class AckTarget(Protocol):
    """What the flusher needs of a device connection (gateway.device_conn.DeviceConnection)."""

    device_id: str
    session: GatewaySession
    closing: bool
    failed: bool  # a store of its rows failed: it gets no ack again
    tail: asyncio.Future[None] | None  # the flush holding its newest frame
    acking: asyncio.Future[None] | None  # its own ack sender or close, while one runs

    def writable(self) -> bool:
        """True when a small frame can be sent now without waiting for the peer."""
        ...

    async def send(self, frame: str) -> None: ...

    async def close(self, code: str, message: str) -> None: ...


class _Batch:
    """The frames of one flush: (connection, rows, ack target, received time) each."""

    __slots__ = ("done", "frames", "stored")

    def __init__(self, done: asyncio.Future[None], stored: asyncio.Future[None]) -> None:
        self.done = done  # set once the flush's acks are sent (or handed to a sender)
        self.stored = stored  # set once its store returned (the next flush's store may start)
        self.frames: list[tuple[AckTarget, list[ReadingRow], int, float]] = []


class _Later:
    """Acks a slow connection still has to send: only the highest target goes out (cumulative)."""

    __slots__ = ("received", "target")

    def __init__(self) -> None:
        self.target = 0
        self.received: list[float] = []  # received times of the frames it covers (ack latency)


class Flusher:
    """Batches the store-and-ack path of every device connection (see the module docstring)."""

    def __init__(self, storage: ReadingWriter, metrics: Metrics, listeners: Listeners | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 store: Callable[[list[ReadingRow]], Awaitable[list[ReadingRow]]] | None = None) -> None:
        """``listeners``: who gets the committed rows (gateway/fanout.py); ``clock``: seconds, for
        the commit and ack latency histograms; ``store``: instead of ``storage.store`` (a worker
        whose commits are made by the commit process: gateway/commit_link.py)."""
        self.storage = storage
        self._store_in = store  # None: storage.store, looked up at each call
        self.metrics = metrics
        self.counters = metrics.counters
        self.listeners = listeners if listeners is not None else Listeners(metrics)
        self.clock = clock
        self._pending: _Batch | None = None  # the batch frames join until its flush starts
        self._last: _Batch | None = None  # the newest flush
        self._later: dict[AckTarget, _Later] = {}
        self._refused: weakref.WeakSet[AckTarget] = weakref.WeakSet()  # a store of their rows failed

    def _commit(self, rows: list[ReadingRow]) -> Awaitable[list[ReadingRow]]:
        return (self._store_in or self.storage.store)(rows)

    def add(self, conn: AckTarget, rows: list[ReadingRow], target: int) -> None:
        """Store ``rows`` (empty for a duplicate frame), then ack ``target`` on ``conn``."""
        batch = self._pending
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._pending = _Batch(loop.create_future(), loop.create_future())
            spawn(self._flush(batch, self._last), "store and ack")
            self._last = batch
        batch.frames.append((conn, rows, target, self.clock()))
        conn.tail = batch.done

    async def _flush(self, batch: _Batch, previous: _Batch | None) -> None:
        try:
            if previous is not None and not previous.stored.done():
                await asyncio.wait((previous.stored,))  # one store at a time; frames join this batch meanwhile
            if self._pending is batch:
                self._pending = None  # frames from now on go to the next flush
            refused = self._refused
            try:
                failed, inserted = await self._store([f for f in batch.frames if f[0] not in refused])
            finally:
                batch.stored.set_result(None)
            if previous is not None and not previous.done.done():
                await asyncio.wait((previous.done,))  # acks and listeners in flush order (wait: never cancels it)
            try:
                await self._acks(batch.frames, failed)
            finally:
                if inserted:
                    self.listeners.committed(inserted)  # never raises (gateway/fanout.py)
        finally:
            batch.done.set_result(None)

    async def _store(self, frames: list[tuple[AckTarget, list[ReadingRow], int, float]]
                     ) -> tuple[dict[AckTarget, str], list[ReadingRow]]:
        """Store the rows of every frame; return the connections whose rows failed, with why, and
        the rows newly inserted."""
        rows = [row for frame in frames for row in frame[1]]
        if not rows:
            return {}, []
        started = self.clock()
        try:
            inserted = await self._commit(rows)
        except Exception as err:  # StorageError, OSError, or a bug: never ack these rows
            failed, inserted = await self._store_apart(frames, err)
            self._refused.update(failed)  # before the next store starts: nothing more of theirs is stored
            return failed, inserted
        self.metrics.commit_latency.observe(self.clock() - started)
        return {}, inserted

    async def _store_apart(self, frames: list[tuple[AckTarget, list[ReadingRow], int, float]],
                           err: Exception) -> tuple[dict[AckTarget, str], list[ReadingRow]]:
        """The batch failed: store each connection's rows on its own (idempotent), so that rows the
        storage refuses fail only their connection. A database that is down fails them all."""
        own: dict[AckTarget, list[ReadingRow]] = {}
        for conn, rows, _, _ in frames:
            if rows:
                own.setdefault(conn, []).extend(rows)
        outcomes = await commit_apart(list(own.values()), self._commit, err, concurrently=True)
        failed: dict[AckTarget, str] = {}
        inserted: list[ReadingRow] = []
        for conn, (error, rows) in zip(own, outcomes, strict=True):
            if error is not None:
                failed[conn] = _describe(error)
            else:
                inserted += rows
        return failed, inserted

    async def _acks(self, frames: list[tuple[AckTarget, list[ReadingRow], int, float]],
                    failed: dict[AckTarget, str]) -> None:
        # One ack per connection: its highest target (targets only grow), covering all its frames.
        acks: dict[AckTarget, tuple[int, list[float]]] = {}
        stored = 0
        for conn, rows, target, received in frames:
            if conn in failed or conn.failed:
                continue
            stored += len(rows)
            entry = acks.get(conn)
            if entry is None:
                acks[conn] = (target, [received])
            else:
                entry[1].append(received)
                acks[conn] = (max(entry[0], target), entry[1])
        self.counters.readings_stored += stored
        for conn, error in failed.items():
            self._storage_failed(conn, error)
        for conn, (target, times) in acks.items():
            await self._ack(conn, target, times)

    async def _ack(self, conn: AckTarget, target: int, received: list[float]) -> None:
        """Send ``conn`` its ack now if that cannot wait, else hand it to the connection's sender.

        websockets' ``send`` writes the frame, then waits while the transport's write buffer is
        above its high-water mark (a device that does not read). Awaiting that here would hold
        every later connection's ack behind one slow device. Checked instead: with the
        connection open and its write buffer empty, a ~20-byte ack goes to the socket (or to
        the empty buffer, far below the mark), so ``send`` returns without waiting, and the
        flush sends it inline: no Task per ack. A connection with bytes still buffered, or a
        sender already running, gets one sender Task of its own that sends the newest target
        when it can; later flushes add to it instead of sending ahead of it.
        """
        later = self._later.get(conn)
        if later is None and conn.writable():
            try:
                await conn.send(conn.session.ack(target))
            except ConnectionClosed:
                return  # the device learns last_seq from the next welcome
            now = self.clock()
            for at in received:
                self.metrics.ack_latency.observe(now - at)
            return
        if later is None:
            later = self._later[conn] = _Later()
            conn.acking = spawn(self._send_later(conn, later), "ack sender")
        later.target = max(later.target, target)
        later.received.extend(received)

    async def _send_later(self, conn: AckTarget, later: _Later) -> None:
        try:
            while later.received and not conn.failed:
                received, later.received = later.received, []
                await conn.send(conn.session.ack(later.target))
                now = self.clock()
                for at in received:
                    self.metrics.ack_latency.observe(now - at)
        except ConnectionClosed:
            pass
        finally:
            del self._later[conn]

    def _storage_failed(self, conn: AckTarget, error: str) -> None:
        """Close ``conn`` with storage_unavailable; no ack goes to it after this."""
        if conn.failed:
            return
        conn.failed = True
        conn.closing = True  # nothing it sends from now on is stored
        self.counters.storage_errors += 1
        log("storage_failed", logging.ERROR, device=conn.device_id, error=error)
        conn.acking = spawn(self._close(conn, conn.acking), "storage close")

    async def _close(self, conn: AckTarget, sender: asyncio.Future[None] | None) -> None:
        if sender is not None and not sender.done():
            await asyncio.wait((sender,))  # acks of rows stored before the failure go out first
        await conn.close(wire.E_STORAGE, STORAGE_CLOSE_MESSAGE)


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__
