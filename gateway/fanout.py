"""Fan-out after the commit: everything that follows a stored reading, through one listener list.

The flusher (gateway/flusher.py) hands every committed batch to ``Listeners.committed``: the rows
``storage.store`` really inserted (gateway/storage/base.py), so never a row whose commit failed
and never a reading twice (a resend after a failed commit, or of a seq already stored, is not in
it). Batches come in commit order (the flusher's order, which keeps each device's seq order),
right after the flush sent the batch's acks (or handed them to a slow connection's sender).
Each row carries its device, seq, times, metrics, quality and the boot id of its frame.

A listener is a function ``listener(rows)``, called once per batch: it must not change ``rows``,
must not block and does no I/O (it records, or wakes a task of its own, and returns). A listener
that raises is logged (at most once a minute per listener) and counted
(``edgewire_commit_listener_errors_total{listener}``); the other listeners and the acks go on.

The listeners, registered where the gateway is put together (gateway/server.py):

- ``dashboard``: the hub's latest values and boot ids (``Hub.committed``);
- ``alerts``: the alert rules, once per stored reading (``AlertLifecycle.committed``);
- ``forwarding``: wakes the forwarders and feeds the MQTT bridge's discovery
  (``Forwarding.committed``).

The cluster's deltas need no listener of their own: they are the hub's changes of each interval
(``Hub.on_update``, gateway/cluster/cluster.py). A new consumer of readings is one module with its
listener and one ``listeners.add(name, listener)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway.logs import log
from gateway.metrics import Metrics
from gateway.storage.base import ReadingRow

LOG_EVERY_S = 60.0  # a failing listener is logged at most this often (it may fail on every batch)


class CommitListener(Protocol):
    """Called with the rows of one committed batch (see the module docstring)."""

    def __call__(self, rows: list[ReadingRow], /) -> None: ...


class Listeners:
    """The registered commit listeners, called in registration order."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.errors = metrics.listener_errors  # listener name -> batches it failed on (/metrics)
        self.clock = clock
        self._listeners: list[tuple[str, CommitListener]] = []
        self._logged: dict[str, float] = {}  # listener name -> when its last failure was logged

    def add(self, name: str, listener: CommitListener) -> None:
        """Register ``listener`` under ``name`` (its label in the metrics and the log)."""
        if any(name == known for known, _ in self._listeners):
            raise ValueError(f"a commit listener named {name!r} is registered already")
        self._listeners.append((name, listener))
        self.errors.setdefault(name, 0)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._listeners]

    def committed(self, rows: list[ReadingRow]) -> None:
        """Hand ``rows`` (newly stored, in commit order) to every listener; never raises."""
        for name, listener in self._listeners:
            try:
                listener(rows)
            except Exception as err:  # a bug in one consumer: the others and the acks go on
                self._failed(name, err)

    def _failed(self, name: str, err: Exception) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        now = self.clock()
        last = self._logged.get(name)
        if last is None or now - last >= LOG_EVERY_S:
            self._logged[name] = now
            log("commit_listener_failed", logging.ERROR, listener=name, failures=self.errors[name],
                error=f"{type(err).__name__}: {err}"[:300])
