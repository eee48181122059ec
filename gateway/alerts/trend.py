"""A least-squares line over a sliding time window, in constant memory and O(1) per reading.

Readings are averaged into time slots (``window / slots`` wide); each closed slot is one
point (mean time, mean value) in a ring of ``slots + 1`` points. The line is refitted only
when a slot closes, over the points inside the window, so a reading costs a few additions
and a refit costs O(slots). The rate and predictive rules use it.
"""

from __future__ import annotations

from array import array

MINUTE_MS = 60_000.0


class Trend:
    __slots__ = ("acc_n", "acc_t", "acc_v", "count", "head", "level", "newest", "points", "size", "slope",
                 "slot_end", "slot_ms", "ts", "vs", "window_ms")

    def __init__(self, window_ms: int, slots: int) -> None:
        self.window_ms = window_ms
        self.slot_ms = max(1, window_ms // slots)
        self.size = slots + 1
        self.ts = array("d", bytes(8 * self.size))
        self.vs = array("d", bytes(8 * self.size))
        self.head = 0  # next ring position to write
        self.count = 0  # points held (<= size)
        self.acc_n = 0
        self.acc_t = 0.0
        self.acc_v = 0.0
        self.slot_end = -1
        self.points = 0  # points of the last fit
        self.slope = 0.0  # value per minute
        self.level = 0.0  # the fitted value at ``newest``
        self.newest = 0.0  # time (ms) of the newest point of the last fit

    def reset(self) -> None:
        self.count = self.acc_n = self.points = 0
        self.slot_end = -1

    def add(self, time_ms: int, value: float) -> bool:
        """Add a reading; True when a slot closed and the line was refitted."""
        refitted = False
        if time_ms >= self.slot_end:
            if self.acc_n:
                n = self.acc_n
                head = self.head
                self.ts[head] = self.acc_t / n
                self.vs[head] = self.acc_v / n
                self.head = (head + 1) % self.size
                if self.count < self.size:
                    self.count += 1
                self._fit()
                refitted = True
            self.slot_end = time_ms + self.slot_ms
            self.acc_n = 0
            self.acc_t = self.acc_v = 0.0
        elif time_ms < self.slot_end - self.slot_ms - self.window_ms:
            return False  # far older than the slot (a replayed backlog out of order): ignored
        self.acc_n += 1
        self.acc_t += time_ms
        self.acc_v += value
        return refitted

    def _fit(self) -> None:
        ts, vs, size = self.ts, self.vs, self.size
        newest = ts[(self.head - 1) % size]
        oldest = newest - self.window_ms
        n = 0
        sx = sy = sxx = sxy = 0.0
        for i in range(self.count):
            t = ts[(self.head - 1 - i) % size]
            if t < oldest:
                break
            x = (t - newest) / MINUTE_MS
            y = vs[(self.head - 1 - i) % size]
            n += 1
            sx += x
            sy += y
            sxx += x * x
            sxy += x * y
        self.points = n
        self.newest = newest
        if n < 2:
            self.slope = 0.0
            self.level = sy / n if n else 0.0
            return
        denominator = n * sxx - sx * sx
        if denominator <= 0:
            self.slope = 0.0
            self.level = sy / n
            return
        self.slope = (n * sxy - sx * sy) / denominator
        self.level = (sy - self.slope * sx) / n  # the line at x = 0: the newest point's time
