"""The load generator's outbox: protocol.outbox.MemoryOutbox, plus one ack-latency sample per
acknowledged reading (clock passed in).

A reading's latency runs from its ``ts`` (taken) to its ack. A device that batches (the
capacity step: 10 readings per frame) marks each batch complete with ``batch_ready``; its
readings' latency then runs from that moment, when the frame is due, so the time a reading
waits for the rest of its batch on the device is not charged to the gateway.

DeviceSession decides what to ack, drop or renumber and applies it here; the load
generator only adds readings.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable

from protocol.outbox import MemoryOutbox

__all__ = ["BenchOutbox"]


def _wall_ms() -> float:
    return time.time() * 1000.0


class BenchOutbox(MemoryOutbox):
    """MemoryOutbox that records, in ``latencies``, ms from each acked reading's ts (or its batch's
    completion) to its ack."""

    def __init__(self, latencies: array[float] | None = None, first_seq: int | None = None,
                 clock_ms: Callable[[], float] = _wall_ms) -> None:
        super().__init__(first_seq)
        self.latencies = latencies  # None: no samples kept
        self.clock_ms = clock_ms
        self.batches: deque[tuple[int, float]] = deque()  # (last seq of a complete batch, completed at ms)

    def batch_ready(self, last_seq: int, at_ms: float) -> None:
        """Readings up to ``last_seq`` (not yet marked) form a batch completed at ``at_ms``."""
        self.batches.append((last_seq, at_ms))

    def ack(self, seq: int) -> int:
        latencies = self.latencies
        readings = self.readings
        batches = self.batches
        if latencies is not None and readings and readings[0].seq <= seq:
            now = self.clock_ms()
            index = 0
            for reading in readings:
                if reading.seq > seq:
                    break
                origin: float | None = reading.ts
                if batches:
                    while index < len(batches) and batches[index][0] < reading.seq:
                        index += 1
                    if index < len(batches):
                        origin = batches[index][1]
                if origin is not None:
                    latencies.append(now - origin)
        while batches and batches[0][0] <= seq:
            batches.popleft()
        return super().ack(seq)

    def renumber(self, delta: int) -> None:
        super().renumber(delta)
        self.batches = deque((last + delta, at) for last, at in self.batches)
