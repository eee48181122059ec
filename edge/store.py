"""The durable reading queue: SQLite in WAL mode with synchronous=FULL.

A reading gets its seq and is committed before anything is sent; it is deleted only
when the gateway acknowledges it (cumulative ack). The seq counter, drop and reject
counters and runtime settings (interval, thresholds) live in the same file, in the
same transactions, so a crash (SIGKILL, power loss) loses nothing that was
committed and never reuses a seq. The queue is bounded by count and age; readings
dropped to honour the bounds are counted (reported as status ``dropped``).
"""

from __future__ import annotations

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


def private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or make an existing one of ours private: state is nobody else's."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        info = path.stat()
        if info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.chmod(path, 0o700)


class ReadingQueue:
    """Readings waiting for the gateway's ack, in seq order, on disk.

    It is the agent's outbox for protocol.device.DeviceSession: ``next_seq``, ``first_seq``,
    ``confirmed``, ``pending``, ``ack``, ``drop``, ``renumber`` and ``confirm``.
    """

    def __init__(self, path: Path | str, max_readings: int = 100_000, max_age: float = 7 * 86400.0) -> None:
        self.path = Path(path)
        self.max_readings = max_readings
        self.max_age = max_age
        try:
            private_dir(self.path.parent)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            if os.name == "posix":
                os.chmod(self.path, 0o600)  # before the first write: SQLite gives -wal/-shm the same mode
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            with self._tx():
                if self._get("next_seq", "") == "" and self._get("counter", "") == "":
                    self._set("counter", "new")  # a new queue: the seq counter may have been lost
        except (OSError, sqlite3.Error) as err:
            raise QueueError(f"cannot open the queue {self.path}: {err}; check that the state directory "
                             "exists and is writable by the agent's user (StateDirectory=edgewire)") from err

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

    @property
    def first_seq(self) -> int:
        """The lowest seq held, or next_seq when the queue is empty."""
        row = self.db.execute("SELECT min(seq) FROM readings").fetchone()
        return int(row[0]) if row and row[0] is not None else self.next_seq

    @property
    def confirmed(self) -> bool:
        """False while a welcome never confirmed the counter of this (new) queue."""
        return self._get("counter", "confirmed") != "new"

    def ack(self, seq: int) -> int:
        """The gateway stored everything through ``seq``: delete it; return how many were deleted."""
        with self._tx():
            return int(self.db.execute("DELETE FROM readings WHERE seq <= ?", (seq,)).rowcount)

    def drop(self, first: int, last: int) -> int:
        """The gateway refused readings first..last as invalid: delete and count them (``rejected``)."""
        with self._tx():
            n = int(self.db.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (first, last)).rowcount)
            if n:
                self._add("rejected", n)
            return n

    def renumber(self, delta: int) -> None:
        """Add ``delta`` to every held seq and to the counter (the counter was lost); confirm it."""
        with self._tx():
            # two steps so the primary key never collides
            self.db.execute("UPDATE readings SET seq = -(seq + ?)", (delta,))
            self.db.execute("UPDATE readings SET seq = -seq")
            self._set("next_seq", str(int(self._get("next_seq", "1")) + delta))
            self._set("counter", "confirmed")

    def confirm(self) -> None:
        """A welcome confirmed the counter."""
        if not self.confirmed:
            with self._tx():
                self._set("counter", "confirmed")

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
