"""The load generator's outbox: protocol.outbox.MemoryOutbox, plus one ack-latency sample per
acknowledged reading (reading taken -> stored and acked; clock passed in).

DeviceSession decides what to ack, drop or renumber and applies it here; the load
generator only adds readings.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable

from protocol.outbox import MemoryOutbox

__all__ = ["BenchOutbox"]


def _wall_ms() -> float:
    return time.time() * 1000.0


class BenchOutbox(MemoryOutbox):
    """MemoryOutbox that records, in ``latencies``, ms from each acked reading's ts to its ack."""

    def __init__(self, latencies: array[float] | None = None, first_seq: int | None = None,
                 clock_ms: Callable[[], float] = _wall_ms) -> None:
        super().__init__(first_seq)
        self.latencies = latencies  # None: no samples kept
        self.clock_ms = clock_ms

    def ack(self, seq: int) -> int:
        latencies = self.latencies
        readings = self.readings
        if latencies is not None and readings and readings[0].seq <= seq:
            now = self.clock_ms()
            for reading in readings:
                if reading.seq > seq:
                    break
                if reading.ts is not None:
                    latencies.append(now - reading.ts)
        return super().ack(seq)
