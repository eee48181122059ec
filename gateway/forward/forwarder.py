"""The forwarder: stored readings to one sink, from a cursor kept in storage, at least once.

One Forwarder per sink, run as a supervised task. It takes the sink's lease in storage
(``claim_sink``: only one gateway sharing a database forwards a sink; the others stand by and
take over when the lease runs out), then loops:

1. read the readings stored after ``read_pos`` (``readings_after``: storage order, so neither
   an outage nor a restart reorders or skips anything);
2. hand them to the sink, never more than ``window`` beyond the STORED cursor;
3. as the sink reports acks, advance the cursor over the acked prefix and store it (at most
   every ``save_s``, or when half the window is acked), renewing the lease with it.

So a crash, a kill -9 or a lost lease repeats at most ``window`` readings (the consumers dedupe
by (device, seq), which every message carries), and never skips one. If the sink reports a
reading FAILED (connection lost, timeout), the forwarder goes back to the first reading not
acked and sends again from there. A reading deleted by retention before it was forwarded, and
a message the broker refuses for good, are forced drops: counted (``counters``) and logged.

Stopping (``close``) waits up to ``drain_s`` for the readings in flight, stores the cursor and
releases the lease, so another instance can take over at once.

The lag (``lag_s``) is the age of the oldest reading stored but not yet forwarded: the oldest
one handed to the sink and not acked, or, when none is, the first one after ``read_pos``
(looked up at most every ``PEEK_S`` while the sink is away, ``_peek``). So it keeps growing
while a broker is down, and is 0 once the sink has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.backoff import Backoff
from gateway.errors import StorageError
from gateway.forward.sink import ACKED, FAILED, Sink
from gateway.logs import log
from gateway.storage.base import ForwardLog, LogPosition

PENDING = -1
DONE = 0
LOST = 1  # FAILED: to be sent again

STANDBY = "standby"  # another instance holds the lease
FORWARDING = "forwarding"
WAITING = "waiting_for_broker"  # the sink is not connected
STORAGE_ERROR = "storage_error"
STOPPED = "stopped"
STARTING = "starting"
PEEK_S = 1.0  # while the sink is away, look up the oldest reading waiting (for the lag) at most this often


@dataclass(slots=True)
class ForwardCounters:
    sent: int = 0  # readings handed to the sink, resends included
    acked: int = 0  # confirmed by the broker
    resent: int = 0  # handed again after a failure (at-least-once duplicates, at most the window each time)
    refused: int = 0  # refused by the broker for good (forced drop)
    expired: int = 0  # deleted by retention before they were forwarded (forced drop)
    failures: int = 0  # failure reports that made the forwarder go back
    lease_lost: int = 0  # times another instance took the sink over while this one forwarded
    storage_errors: int = 0  # storage calls that failed (retried with a backoff)


class Forwarder:
    """Stored readings to ``sink`` from its cursor; ``owner`` names this gateway instance in the lease."""

    def __init__(self, sink: Sink, storage: ForwardLog, owner: str, *, window: int = 2000, batch: int = 500,
                 lease_s: float = 15.0, save_s: float = 0.1, poll_s: float = 0.25, trim_s: float = 60.0,
                 drain_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        if window < 1 or batch < 1:
            raise ValueError("window and batch must be at least 1")
        self.sink = sink
        self.storage = storage
        self.owner = owner
        self.window = window
        self.batch = batch
        self.lease_ms = int(lease_s * 1000)
        self.renew_s = lease_s / 3
        self.save_s = save_s
        self.poll_s = poll_s
        self.trim_s = trim_s
        self.drain_s = drain_s
        self.clock = clock
        self.counters = ForwardCounters()
        self.state = STARTING
        self.cursor: LogPosition | None = None  # the stored cursor, while holding the lease
        self.oldest_pending_ms = 0  # received_ms of the oldest reading stored and not forwarded yet (0: none)
        self.inflight = 0  # readings beyond the stored cursor
        self.trimmed = 0  # readings of log rows trimmed by age before this sink passed them (from storage)
        self._event = asyncio.Event()
        self._stopping = False
        self._finished = asyncio.Event()
        self._failed = False
        self._gen = 0
        self._retry = Backoff(0.5, 5.0)  # after a storage error
        self._resend = Backoff(0.2, 5.0)  # before sending again what the sink failed
        self._resend_until = 0
        sink.on_change(self.wake)

    @property
    def name(self) -> str:
        return self.sink.name

    def wake(self) -> None:
        """New readings were stored, or the sink changed: look now (cheap; safe from any callback)."""
        self._event.set()

    def lag_s(self, now: float | None = None) -> float:
        """Seconds since the oldest reading stored but not yet forwarded (acked or dropped for good) was
        received: it grows while the sink is away; 0 when the sink has caught up."""
        if not self.oldest_pending_ms:
            return 0.0
        return max(0.0, (self.clock() if now is None else now) - self.oldest_pending_ms / 1000.0)

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """What /metrics shows of this forwarder (also sent by the forwarding worker, as JSON)."""
        c = self.counters
        return {"sink": self.name, "state": self.state, "connected": self.sink.ready, "sent": c.sent,
                "acked": c.acked, "resent": c.resent, "refused": c.refused, "expired": c.expired,
                "trimmed": self.trimmed, "failures": c.failures, "inflight": self.inflight,
                "lag_s": round(self.lag_s(now), 3), "lease_lost": c.lease_lost, "storage_errors": c.storage_errors}

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Forward until ``close``; standby while another instance holds the lease."""
        self._finished.clear()
        try:
            while not self._stopping:
                try:
                    position = await self._claim()
                    if position is None:
                        return
                    await self._forward(position)
                except StorageError as err:
                    self.counters.storage_errors += 1
                    self.state = STORAGE_ERROR
                    delay = self._retry.next_s()
                    log("forward_storage_error", logging.WARNING, sink=self.name, error=str(err)[:300],
                        retry_s=delay)
                    await self._pause(delay)
        finally:
            self.state = STOPPED
            self.cursor = None
            self._finished.set()

    async def close(self) -> None:
        """Stop: wait (bounded) for the readings in flight, store the cursor, release the lease."""
        self._stopping = True
        self.wake()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished.wait(), self.drain_s + 10.0)

    # ------------------------------------------------------------ internals
    def _backoff_reset(self) -> None:
        self._retry.reset()
        self._resend.reset()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def _pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, or until woken."""
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)

    async def _claim(self) -> LogPosition | None:
        announced = False
        while not self._stopping:
            position = await self.storage.claim_sink(self.name, self.owner, self._now_ms(), self.lease_ms)
            if position is not None:
                await self._read_trimmed()
                log("forward_lease_taken", sink=self.name, owner=self.owner, cursor=list(_tuple(position)))
                self._backoff_reset()
                return position
            if not announced:
                log("forward_standby", sink=self.name, owner=self.owner)
                announced = True
            self.state = STANDBY
            self.oldest_pending_ms = 0  # the holder of the lease reports the lag
            await self._pause(self.renew_s)
        return None

    async def _read_trimmed(self) -> None:
        for cursor in await self.storage.sink_cursors():
            if cursor.sink == self.name:
                if cursor.expired > self.trimmed:
                    log("forward_log_trimmed_before_forwarding", logging.WARNING, sink=self.name,
                        readings=cursor.expired, note="the sink was behind longer than the readings retention")
                self.trimmed = cursor.expired

    def _done(self, entry: list[Any], outcome: int) -> None:
        if entry[2] != self._gen or entry[1] != PENDING:
            return  # a reading the forwarder already went back over, or a second report
        if outcome == FAILED:
            entry[1] = LOST
            self._failed = True
            self.counters.failures += 1
        else:
            entry[1] = DONE
            if outcome == ACKED:
                self.counters.acked += 1
            else:
                self.counters.refused += 1
        self._event.set()

    async def _advance(self, position: LogPosition) -> bool:
        if await self.storage.advance_sink(self.name, self.owner, position, self._now_ms(), self.lease_ms):
            self.cursor = position
            return True
        self.counters.lease_lost += 1
        log("forward_lease_lost", logging.WARNING, sink=self.name, owner=self.owner,
            note="another instance took this sink over; standing by")
        return False

    async def _forward(self, start: LogPosition) -> None:
        """Forward from ``start`` while holding the lease; return when it is lost or on close."""
        entries: deque[list[Any]] = deque()  # [position, state, generation, received_ms], oldest first
        prefix = 0  # entries[:prefix] are done (acked, refused or expired) but not stored yet
        read_pos = start
        self.cursor = start
        loop = asyncio.get_running_loop()
        last_save = last_trim = loop.time()
        last_peek = last_save - PEEK_S
        drain_until: float | None = None
        self._gen += 1
        self._failed = False
        while True:
            self._event.clear()
            now = loop.time()
            if self._failed:  # go back to the first reading not done and send again from there
                self._failed = False
                self._gen += 1
                gone = len(entries) - prefix
                for _ in range(gone):
                    entries.pop()
                read_pos = entries[-1][0] if entries else (self.cursor or start)
                delay = self._resend.next_s()
                log("forward_resend", logging.WARNING, sink=self.name, readings=gone, after_s=delay)
                self._resend_until = gone  # the next ``gone`` readings handed over are resends
                await self._pause(delay)
                continue
            while prefix < len(entries) and entries[prefix][1] == DONE:
                prefix += 1
            self.inflight = len(entries)
            if prefix < len(entries):
                self.oldest_pending_ms = entries[prefix][3]
            elif not self.sink.ready and now - last_peek >= PEEK_S:  # the oldest one stored after read_pos
                last_peek = now
                self.oldest_pending_ms = await self._peek(read_pos)
            # else: ready with nothing in flight: the read below tells (0 when it finds nothing)
            if self._stopping and drain_until is None:
                drain_until = now + self.drain_s
            if prefix and (drain_until is not None or now - last_save >= self.save_s or prefix >= self.window // 2):
                position = entries[prefix - 1][0]
                if not await self._advance(position):
                    return
                for _ in range(prefix):
                    entries.popleft()
                prefix = 0
                last_save = now
                self._backoff_reset()
            elif now - last_save >= self.renew_s:
                if not await self._advance(self.cursor or start):
                    return
                last_save = now
            if drain_until is not None:
                if not entries or now >= drain_until:
                    if entries:
                        log("forward_stopped_with_readings_in_flight", logging.WARNING, sink=self.name,
                            readings=len(entries), note="sent again after the next start")
                    await self.storage.release_sink(self.name, self.owner)
                    return
                await self._wait(min(self.save_s, drain_until - now))
                continue
            if now - last_trim >= self.trim_s:
                last_trim = now
                await self.storage.trim_forward_log(0)
                await self._read_trimmed()
            room = self.window - len(entries)
            if room > 0 and self.sink.ready:
                self.state = FORWARDING
                page = await self.storage.readings_after(read_pos, min(room, self.batch))
                if prefix == len(entries):  # nothing in flight: the page's first reading is the oldest waiting
                    self.oldest_pending_ms = _received_ms(page)
                if page:
                    self._hand_over(page, entries)
                    read_pos = page[-1][0]
                    await asyncio.sleep(0)  # let acks and other tasks in between pages
                    continue
            elif not self.sink.ready:
                self.state = WAITING
            await self._wait(self.poll_s if room > 0 else self.save_s)

    async def _peek(self, read_pos: LogPosition) -> int:
        """received_ms of the first reading stored after ``read_pos`` (0 when there is none)."""
        return _received_ms(await self.storage.readings_after(read_pos, 1))

    def _hand_over(self, page: list[tuple[LogPosition, Any]], entries: deque[list[Any]]) -> None:
        gen = self._gen
        send = self.sink.send
        counters = self.counters
        for position, reading in page:
            if reading is None:  # deleted by retention before it was forwarded
                entries.append([position, DONE, gen, 0])
                counters.expired += 1
                continue
            entry = [position, PENDING, gen, reading.received_ms]
            entries.append(entry)
            counters.sent += 1
            if self._resend_until:
                self._resend_until -= 1
                counters.resent += 1
            send(reading, functools.partial(self._done, entry))
        if counters.expired and any(r is None for _, r in page):
            log("forward_expired_readings", logging.WARNING, sink=self.name, total=counters.expired,
                note="deleted by retention before they were forwarded (is the broker down for that long?)")

    async def _wait(self, seconds: float) -> None:
        if self._event.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max(0.0, seconds))


def _tuple(position: LogPosition) -> tuple[int, int, int]:
    return (position.tx, position.commit, position.index)


def _received_ms(page: list[tuple[LogPosition, Any]]) -> int:
    """received_ms of a page's first reading that still exists (0 when none does)."""
    for _position, reading in page:
        if reading is not None:
            return int(reading.received_ms)
    return 0
