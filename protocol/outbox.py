"""An outbox in memory: the reference implementation of the interface DeviceSession drives.

The simulator and the load generator keep their readings in one; the Pi agent (SQLite,
edge/store.py) and the firmware (flash ring, firmware/ring.py) implement the same members
over their own stores. MicroPython-safe, but not deployed to the board; the phone page
(gateway/dashboard/phone/phone.py) runs it on MicroPython in the browser, writing every change
through to IndexedDB.
"""

from protocol.wire import Reading


class Outbox:
    """The interface DeviceSession drives (for documentation and type checks; drivers duck-type it).

    ``next_seq``: the seq the next reading gets. ``first_seq``: the lowest seq held, or
    next_seq when empty. ``confirmed``: False while the counter was never confirmed by a
    welcome (the store was created fresh, so the counter may have been lost).
    """

    next_seq = 1
    first_seq = 1
    confirmed = True

    def pending(self, after, limit):
        """Up to ``limit`` readings with seq > ``after``, ascending (gaps allowed)."""
        raise NotImplementedError

    def ack(self, seq):
        """Delete every reading with seq <= ``seq``; return how many."""
        raise NotImplementedError

    def drop(self, first, last):
        """Delete readings first..last (the gateway refused them), count them as rejected; return how many."""
        raise NotImplementedError

    def renumber(self, delta):
        """Add ``delta`` to every held seq and to next_seq, and mark the counter confirmed."""
        raise NotImplementedError

    def confirm(self):
        """Mark the counter confirmed by a welcome (idempotent)."""
        raise NotImplementedError


class MemoryOutbox(Outbox):
    """Readings not yet acknowledged, in seq order, in a list.

    ``first_seq`` None means the counter was lost (a fresh process): the first welcome
    decides where numbering continues. ``limit`` > 0 bounds the outbox: the oldest
    reading is dropped (and counted in ``dropped``) to make room.
    """

    def __init__(self, first_seq=None, limit=0):
        self.readings = []
        self.next_seq = first_seq if first_seq is not None and first_seq > 0 else 1
        self.confirmed = first_seq is not None
        self.limit = limit
        self.dropped = 0  # evicted from a full outbox before an ack
        self.rejected = 0  # refused by the gateway (drop)
        self.acked = 0  # removed by acks

    @property
    def first_seq(self):
        """The lowest seq held, or next_seq when empty."""
        return self.readings[0].seq if self.readings else self.next_seq

    @property
    def count(self):
        return len(self.readings)

    def add(self, metrics, ts=None, up=None, quality=None):
        """Take one reading; return it (with its seq)."""
        reading = Reading(self.next_seq, metrics, ts, up, quality)
        self.next_seq += 1
        if self.limit and len(self.readings) >= self.limit:
            del self.readings[0]
            self.dropped += 1
        self.readings.append(reading)
        return reading

    def pending(self, after, limit):
        """Up to ``limit`` readings with seq > ``after``, ascending."""
        readings = self.readings
        low = 0
        high = len(readings)
        while low < high:  # binary search: readings are in seq order
            mid = (low + high) // 2
            if readings[mid].seq <= after:
                low = mid + 1
            else:
                high = mid
        return readings[low:low + limit]

    def ack(self, seq):
        """Remove every reading with seq <= ``seq``; return how many."""
        readings = self.readings
        cut = 0
        while cut < len(readings) and readings[cut].seq <= seq:
            cut += 1
        if cut:
            del readings[:cut]
            self.acked += cut
        return cut

    def drop(self, first, last):
        """Remove readings first..last (refused by the gateway), count them; return how many."""
        kept = [r for r in self.readings if r.seq < first or r.seq > last]
        removed = len(self.readings) - len(kept)
        self.readings = kept
        self.rejected += removed
        return removed

    def renumber(self, delta):
        """Add ``delta`` to every held seq and to the counter; the counter is confirmed."""
        for reading in self.readings:
            reading.seq += delta
        self.next_seq += delta
        self.confirmed = True

    def confirm(self):
        self.confirmed = True
