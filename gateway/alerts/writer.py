"""Alert changes stored in order, in batches, and announced only once committed.

The engine changes an alert in memory (on the hot path, without waiting) and queues the
change with its history entry. One consumer writes the queue in batches of at most
``batch`` changes, each batch one transaction (``AlertStore.save_alerts``), then hands every
change of the batch to ``committed`` (the engine indexes the alert and emits its event).
A batch stops before a second change of an alert that is still being inserted (its id is
only known after the commit).

If storage fails, the batch is retried after a backoff (0.5 s doubling to 30 s) and nothing
is announced meanwhile: events never describe an alert that storage does not have. At
shutdown ``drain`` writes what is left, whether ``run`` still runs or not. The queue is
bounded (``max_queue``): beyond it a change is dropped, counted and logged, and the caller
is told (a dropped raise is undone so the rule can raise again later).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import StorageError
from gateway.logs import log
from gateway.storage.base import AlertHistoryRow, AlertRow, AlertStore


class Change:
    __slots__ = ("alert", "entry", "future", "snapshot")

    def __init__(self, alert: AlertRow, entry: AlertHistoryRow, snapshot: dict[str, Any],
                 future: asyncio.Future[None] | None) -> None:
        self.alert = alert
        self.entry = entry
        self.snapshot = snapshot  # the alert as this change left it (its id filled in after the commit)
        self.future = future


class AlertWriter:
    def __init__(self, storage: AlertStore, committed: Callable[[Change], None], *, max_queue: int = 100_000,
                 batch: int = 500, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.storage = storage
        self.committed = committed
        self.max_queue = max_queue
        self.batch = batch
        self.sleep = sleep
        self.queue: deque[Change] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._current: asyncio.Task[bool] | None = None  # the batch being written
        # counters (/metrics)
        self.written = 0
        self.failures = 0  # failed batch writes (each retried)
        self.dropped = 0  # changes dropped because the queue was full

    def add(self, alert: AlertRow, entry: AlertHistoryRow, snapshot: dict[str, Any],
            future: asyncio.Future[None] | None = None) -> bool:
        """Queue a change; False if the queue is full and it was dropped (counted, logged)."""
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log("alert_change_dropped", logging.ERROR, dropped=self.dropped, queued=len(self.queue),
                    hint="storage has not taken alert changes for a long time; check it")
            if future is not None and not future.done():
                future.set_exception(StorageError("alert changes are not being stored (queue full)"))
            return False
        self.queue.append(Change(alert, entry, snapshot, future))
        self._idle.clear()
        self._wake.set()
        return True

    def _take(self) -> list[Change]:
        batch: list[Change] = []
        inserting: set[int] = set()
        for change in self.queue:
            if len(batch) >= self.batch:
                break
            if change.alert.alert_id == 0:
                key = id(change.alert)
                if key in inserting:
                    break  # its id comes with this batch's commit
                inserting.add(key)
            batch.append(change)
        return batch

    async def _write_once(self) -> bool:
        """Store the next batch; True if it was stored (or there was none), False if storage failed.

        The write runs in its own task, shielded: cancelling ``run`` (the gateway stops its tasks
        before it closes the engine) never abandons a transaction that may commit, which ``drain``
        would then write a second time (a duplicate alert or history entry)."""
        if self._current is None or self._current.done():
            if not self.queue:
                return True
            self._current = asyncio.get_running_loop().create_task(self._write_batch())
        return await asyncio.shield(self._current)

    async def _write_batch(self) -> bool:
        batch = self._take()
        try:
            await self.storage.save_alerts([(c.alert, c.entry) for c in batch])
        except StorageError as err:
            self.failures += 1
            log("alert_write_failed", logging.WARNING, changes=len(batch), error=str(err)[:300])
            return False
        for _ in batch:
            self.queue.popleft()
        self.written += len(batch)
        for change in batch:
            change.snapshot["id"] = change.alert.alert_id
            self.committed(change)
            if change.future is not None and not change.future.done():
                change.future.set_result(None)
        return True

    async def run(self) -> None:
        """Write queued changes for the engine's life (a supervised task)."""
        delay = 0.0
        while True:
            if not self.queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if await self._write_once():
                delay = 0.0
            else:
                delay = min(30.0, delay * 2) if delay else 0.5
                await self.sleep(delay)

    async def drain(self, timeout: float) -> bool:
        """Store every queued change now, whether ``run`` still runs or not (shutdown); False if some
        were left after ``timeout`` seconds (storage kept failing)."""
        try:
            async with asyncio.timeout(timeout):
                delay = 0.05
                while self.queue:
                    if not await self._write_once():
                        await asyncio.sleep(delay)
                        delay = min(1.0, delay * 2)
        except TimeoutError:
            return False
        self._idle.set()
        return True

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until ``run`` has stored every queued change; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
