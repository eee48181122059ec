"""The load generator's outbox: a device's readings, kept in memory until the gateway acks them.

It has the outbox interface of protocol.device (``next_seq``, ``first_seq``, ``confirmed``,
``pending``, ``ack``, ``drop``, ``renumber``, ``confirm``), so the protocol core decides
what to ack, drop or renumber and the load generator only holds the readings. On top of
the interface it counts what the benchmark reports: readings acknowledged and refused, and
one ack-latency sample per acknowledged reading (clock passed in).
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_right
from collections.abc import Callable
from operator import attrgetter

from protocol import wire

__all__ = ["BenchOutbox"]

_SEQ = attrgetter("seq")


def _wall_ms() -> float:
    return time.time() * 1000.0


class BenchOutbox:
    """Readings in seq order in a list; a fresh outbox's counter is unconfirmed (nothing persisted)."""

    __slots__ = ("acked", "clock_ms", "confirmed", "latencies", "next_seq", "readings", "rejected")

    def __init__(self, latencies: array[float] | None = None, first_seq: int | None = None,
                 clock_ms: Callable[[], float] = _wall_ms) -> None:
        self.readings: list[wire.Reading] = []
        self.next_seq = 1 if first_seq is None else first_seq
        self.confirmed = first_seq is not None  # False: this process does not know the stored counter
        self.latencies = latencies  # ms from a reading's ts to its ack, appended by ack(); None: not kept
        self.clock_ms = clock_ms
        self.acked = 0  # readings removed by ack()
        self.rejected = 0  # readings removed by drop()

    @property
    def first_seq(self) -> int:
        """The lowest seq held, or ``next_seq`` when empty."""
        readings = self.readings
        return readings[0].seq if readings else self.next_seq

    def add(self, metrics: dict[str, float], ts: int | None = None, up: int | None = None,
            quality: str | None = None) -> wire.Reading:
        """Take one reading: it gets the next seq and stays until acked or dropped."""
        reading = wire.Reading(self.next_seq, metrics, ts, up, quality)
        self.next_seq += 1
        self.readings.append(reading)
        return reading

    def pending(self, after: int, limit: int) -> list[wire.Reading]:
        """Up to ``limit`` readings with seq > ``after``, ascending."""
        readings = self.readings
        if not readings or readings[0].seq > after:
            return readings[:limit]
        start = bisect_right(readings, after, key=_SEQ)
        return readings[start:start + limit]

    def ack(self, seq: int) -> int:
        """Delete every reading with seq <= ``seq`` (stored by the gateway); return how many."""
        readings = self.readings
        if not readings or readings[0].seq > seq:
            return 0
        cut = bisect_right(readings, seq, key=_SEQ)
        latencies = self.latencies
        if latencies is not None:
            now = self.clock_ms()
            for reading in readings[:cut]:
                if reading.ts is not None:
                    latencies.append(now - reading.ts)  # reading taken -> stored and acked
        del readings[:cut]
        self.acked += cut
        return cut

    def drop(self, first: int, last: int) -> int:
        """Delete readings ``first``..``last`` (refused by the gateway) and count them rejected."""
        readings = self.readings
        start = bisect_right(readings, first - 1, key=_SEQ)
        end = bisect_right(readings, last, key=_SEQ)
        n = max(0, end - start)
        del readings[start:end]
        self.rejected += n
        return n

    def renumber(self, delta: int) -> None:
        """Add ``delta`` to every held seq and to ``next_seq``; the counter is then confirmed."""
        for reading in self.readings:
            reading.seq += delta
        self.next_seq += delta
        self.confirmed = True

    def confirm(self) -> None:
        self.confirmed = True

    def __len__(self) -> int:
        return len(self.readings)
