"""What every backend does to a group commit before and while writing it (pure, no I/O).

The write path, the same on SQLite and PostgreSQL, inside ONE transaction:

1. ``check_rows`` each caller's rows (finite numbers, integer seq and times); a bad caller
   fails alone.
2. ``first_per_key`` over the whole group: one row per (device_id, seq), the first wins.
3. Lock and read the devices' watermarks (``device_state.last_seq``, the highest seq
   stored). ``split_by_watermark``: a row above its device's watermark cannot be stored
   yet; a row at or below it (a resend, a late frame from another connection) is looked
   up and dropped if stored. The lock (a write transaction on SQLite, row locks on
   PostgreSQL) makes the watermark exact while we decide, so exactly-once holds across
   concurrent callers, connections and gateways.
4. Insert exactly the new rows; ``aggregate`` them into rollup deltas, latest values and
   the new watermarks, and merge those in the same transaction.
5. After the commit, ``shares`` tells each caller which of its rows were inserted: what its
   ``store`` call returns (gateway/storage/base.py).

Rollups therefore count each reading once, and only after it is committed with them: an
ack covers the reading, its rollups and its device state together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.storage.base import ROLLUP_TIERS, ReadingRow

_TIERS = tuple(ROLLUP_TIERS.items())


def check_rows(rows: Iterable[ReadingRow]) -> None:
    """Raise ValueError unless every row has int seq/times and metric values that are finite numbers."""
    for row in rows:
        if type(row.seq) is not int or type(row.time_ms) is not int or type(row.received_ms) is not int:
            raise ValueError(f"device {row.device_id!r} seq {row.seq!r}: seq and times must be integers")
        if type(row.device_id) is not str or not isinstance(row.metrics, dict):
            raise ValueError(f"seq {row.seq}: device_id must be a string and metrics a dict")
        for name, value in row.metrics.items():
            kind = type(value)
            if (kind is not float and kind is not int) or type(name) is not str:
                raise ValueError(f"device {row.device_id!r} seq {row.seq}: metric {name!r} is not a number")
            if value - value != 0:  # NaN and infinities
                raise ValueError(f"device {row.device_id!r} seq {row.seq}: metric {name!r} is not finite")


def first_per_key(rows: Iterable[ReadingRow]) -> list[ReadingRow]:
    """Rows with one row per (device_id, seq): the first occurrence wins, order kept."""
    seen: set[tuple[str, int]] = set()
    out: list[ReadingRow] = []
    for row in rows:
        key = (row.device_id, row.seq)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def shares(callers: list[list[ReadingRow]], new: list[ReadingRow]) -> list[list[ReadingRow]]:
    """Each caller's share of ``new``, the rows one transaction inserted out of ``first_per_key``
    over all the callers' rows in order: the caller's rows that are in ``new``, in its order. A
    row object offered twice belongs to its first occurrence only (as ``first_per_key`` chose)."""
    if len(new) == sum(len(rows) for rows in callers):  # all new, no key twice: every row as given
        return [list(rows) for rows in callers]
    left = {id(row) for row in new}  # ReadingRow is not hashable; the objects live meanwhile
    out: list[list[ReadingRow]] = []
    for rows in callers:
        mine: list[ReadingRow] = []
        for row in rows:
            key = id(row)
            if key in left:
                left.discard(key)
                mine.append(row)
        out.append(mine)
    return out


def split_by_watermark(rows: list[ReadingRow],
                       watermarks: dict[str, int]) -> tuple[list[ReadingRow], list[ReadingRow]]:
    """(rows certainly new: above their device's watermark, rows to look up: at or below it)."""
    new: list[ReadingRow] = []
    check: list[ReadingRow] = []
    for row in rows:
        if row.seq > watermarks.get(row.device_id, 0):
            new.append(row)
        else:
            check.append(row)
    return new, check


@dataclass(slots=True)
class Aggregates:
    """Everything a batch of new readings adds to the derived tables."""

    # tier name -> (device_id, metric, bucket_ms) -> [count, sum, min, max]
    rollups: dict[str, dict[tuple[str, str, int], list[float]]] = field(default_factory=dict)
    # (device_id, metric) -> (value, time_ms, seq) of the newest (time_ms, seq)
    latest: dict[tuple[str, str], tuple[float, int, int]] = field(default_factory=dict)
    # device_id -> [highest seq, highest received_ms]
    state: dict[str, list[int]] = field(default_factory=dict)

    def rollup_rows(self, tier: str) -> list[tuple[str, str, int, int, float, float, float]]:
        """(device_id, metric, bucket_ms, count, sum, min, max), sorted by key (a stable lock order)."""
        return [(d, m, b, int(a[0]), a[1], a[2], a[3]) for (d, m, b), a in sorted(self.rollups[tier].items())]

    def latest_rows(self) -> list[tuple[str, str, float, int, int]]:
        """(device_id, metric, value, time_ms, seq), sorted by key."""
        return [(d, m, v, t, s) for (d, m), (v, t, s) in sorted(self.latest.items())]

    def state_rows(self) -> list[tuple[str, int, int]]:
        """(device_id, last_seq, last_seen_ms), sorted by device."""
        return [(d, s[0], s[1]) for d, s in sorted(self.state.items())]


def aggregate(rows: Iterable[ReadingRow]) -> Aggregates:
    """Rollup deltas, newest values and watermarks of ``rows`` (readings known to be new)."""
    agg = Aggregates(rollups={name: {} for name in ROLLUP_TIERS})
    tiers = [(width, agg.rollups[name]) for name, width in _TIERS]
    latest = agg.latest
    state = agg.state
    for row in rows:
        device = row.device_id
        t = row.time_ms
        seq = row.seq
        st = state.get(device)
        if st is None:
            state[device] = [seq, row.received_ms]
        else:
            if seq > st[0]:
                st[0] = seq
            if row.received_ms > st[1]:
                st[1] = row.received_ms
        for name, raw in row.metrics.items():
            value = float(raw)
            for width, buckets in tiers:
                key = (device, name, t - t % width)  # floor: Python's % follows the divisor's sign
                acc = buckets.get(key)
                if acc is None:
                    buckets[key] = [1, value, value, value]
                else:
                    acc[0] += 1
                    acc[1] += value
                    if value < acc[2]:
                        acc[2] = value
                    if value > acc[3]:
                        acc[3] = value
            lkey = (device, name)
            old = latest.get(lkey)
            if old is None or t > old[1] or (t == old[1] and seq > old[2]):
                latest[lkey] = (value, t, seq)
    return agg
