"""The durable reading queue: SQLite in WAL mode with synchronous=FULL.

A reading gets its seq and is committed before anything is sent; it is deleted only
when the gateway acknowledges it (cumulative ack). The seq counter, drop and reject
counters and runtime settings (interval, thresholds) live in the same file, in the
same transactions, so a crash (SIGKILL, power loss) loses nothing that was
committed and never reuses a seq. The queue is bounded by count and age; readings
dropped to honour the bounds are counted (reported as status ``dropped``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge.errors import QueueError
from protocol import wire

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    metrics TEXT NOT NULL,
    ts INTEGER,
    up INTEGER,
    q TEXT,
    boot TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ReadingQueue:
    """Readings waiting for the gateway's ack, in seq order, on disk."""

    def __init__(self, path: Path | str, max_readings: int = 100_000, max_age: float = 7 * 86400.0) -> None:
        self.path = Path(path)
        self.max_readings = max_readings
        self.max_age = max_age
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise QueueError(f"cannot open the queue {self.path}: {err}; check that the state directory "
                             "exists and is writable by the agent's user (StateDirectory=edgewire)") from err
        if os.name == "posix":
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)

    # -- meta
    def _get(self, key: str, default: str) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else default

    def _set(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def _add(self, key: str, amount: int) -> None:
        self._set(key, str(int(self._get(key, "0")) + amount))

    def get_setting(self, key: str) -> Any:
        """A persisted runtime setting (JSON), or None."""
        text = self._get("setting." + key, "")
        return json.loads(text) if text else None

    def put_setting(self, key: str, value: Any) -> None:
        with self._tx():
            self._set("setting." + key, json.dumps(value))

    @property
    def next_seq(self) -> int:
        return int(self._get("next_seq", "1"))

    @property
    def dropped(self) -> int:
        return int(self._get("dropped", "0"))

    @property
    def rejected(self) -> int:
        return int(self._get("rejected", "0"))

    def _tx(self) -> _Transaction:
        return _Transaction(self.db, self.path)

    # -- readings
    def append(self, metrics: dict[str, float], ts: int | None, up: int | None, quality: str | None,
               boot: str | None, now: float | None = None) -> int:
        """Commit one reading with the next seq; return the seq. Enforces the bounds first."""
        now = time.time() if now is None else now
        with self._tx():
            seq = int(self._get("next_seq", "1"))
            self.db.execute("INSERT INTO readings(seq, metrics, ts, up, q, boot, created) "
                            "VALUES(?,?,?,?,?,?,?)", (seq, json.dumps(metrics), ts, up, quality, boot, now))
            self._set("next_seq", str(seq + 1))
            self._enforce(now)
        return seq

    def _enforce(self, now: float) -> None:
        dropped = self.db.execute("DELETE FROM readings WHERE created < ?", (now - self.max_age,)).rowcount
        count = self.db.execute("SELECT count(*) FROM readings").fetchone()[0]
        if count > self.max_readings:
            dropped += self.db.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings ORDER BY seq LIMIT ?)",
                (count - self.max_readings,)).rowcount
        if dropped:
            self._add("dropped", dropped)

    def pending(self, after: int = 0, limit: int = 100) -> list[wire.Reading]:
        """Up to ``limit`` unacknowledged readings with seq > ``after``, in seq order."""
        rows = self.db.execute("SELECT seq, metrics, ts, up, q FROM readings WHERE seq > ? "
                               "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [wire.Reading(seq, json.loads(m), ts, up, q) for seq, m, ts, up, q in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM readings").fetchone()[0])

    def acked(self, seq: int) -> int:
        """The gateway stored everything through ``seq``: delete it; return how many were deleted."""
        with self._tx():
            return int(self.db.execute("DELETE FROM readings WHERE seq <= ?", (seq,)).rowcount)

    def reject(self, first: int, last: int) -> int:
        """The gateway refused readings first..last as invalid: delete and count them."""
        with self._tx():
            n = int(self.db.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (first, last)).rowcount)
            if n:
                self._add("rejected", n)
            return n

    def welcome(self, last_seq: int) -> None:
        """Reconcile with the welcome's ``last_seq``.

        If the gateway stored seqs we never issued, our counter was lost (state
        wiped): renumber the unsent readings from last_seq + 1. Otherwise the
        readings through last_seq are stored (their ack was lost): delete them.
        """
        with self._tx():
            next_seq = int(self._get("next_seq", "1"))
            if last_seq >= next_seq:
                first = self.db.execute("SELECT min(seq) FROM readings").fetchone()[0]
                if first is not None:
                    shift = last_seq + 1 - int(first)
                    # two steps so the primary key never collides
                    self.db.execute("UPDATE readings SET seq = -(seq + ?)", (shift,))
                    self.db.execute("UPDATE readings SET seq = -seq")
                    top = self.db.execute("SELECT max(seq) FROM readings").fetchone()[0]
                    self._set("next_seq", str(int(top) + 1))
                else:
                    self._set("next_seq", str(last_seq + 1))
            else:
                self.db.execute("DELETE FROM readings WHERE seq <= ?", (last_seq,))

    def forget_uptime(self, boot: str) -> None:
        """Readings from another boot carry that boot's uptime: clear it (the gateway uses receive time)."""
        with self._tx():
            self.db.execute("UPDATE readings SET up = NULL WHERE boot IS NOT ? AND up IS NOT NULL", (boot,))

    def close(self) -> None:
        self.db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise QueueError(f"queue {self.path}: {err}; check free space and permissions") from err

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as err:
                self.db.execute("ROLLBACK")
                raise QueueError(f"queue {self.path}: commit failed: {err}; check free space") from err
        else:
            self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise QueueError(f"queue {self.path}: {exc}; check free space and permissions") from exc
