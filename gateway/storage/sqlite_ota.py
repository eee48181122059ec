"""SQLite: the OTA store (gateway/storage/ota_base.py) on a SQLiteStorage's writer thread and readers."""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.errors import OtaError
from gateway.storage.ota_base import (
    FINAL_STATES,
    LIVE_ROLLOUTS,
    PENDING,
    ROLLOUT_STATES,
    DeviceReport,
    Member,
    Release,
    Rollout,
)
from gateway.storage.sqlite_core import SQLiteCore

RELEASE_COLUMNS = "release_id, kind, version, manifest, sig, created_ms, size"
ROLLOUT_COLUMNS = "rollout_id, release_id, state, target, canary_pct, max_failures, created_ms, updated_ms, reason"
REPORT_COLUMNS = "device_id, release_id, state, reason, done, total, updated_ms"


def _marks(values: tuple[str, ...]) -> str:
    return ", ".join("?" * len(values))


def rollout_row(r: tuple[Any, ...] | Any) -> Rollout:
    return Rollout(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), str(r[8]))


def report_row(r: tuple[Any, ...] | Any) -> DeviceReport:
    return DeviceReport(str(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], r[5], int(r[6]))


class SQLiteOta:
    def __init__(self, core: SQLiteCore) -> None:
        self.core = core

    async def put_release(self, release: Release, files: dict[str, bytes]) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM ota_releases WHERE release_id = ?", (release.release_id,)).fetchone():
                return False
            conn.execute(f"INSERT INTO ota_releases ({RELEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (release.release_id, release.kind, release.version, release.manifest, release.sig,
                          release.created_ms, release.size))
            conn.executemany("INSERT INTO ota_files (release_id, name, data) VALUES (?, ?, ?)",
                             [(release.release_id, name, data) for name, data in files.items()])
            return True

        return await self.core._write(op)

    async def releases(self) -> list[Release]:
        rows = await self.core._query(f"SELECT {RELEASE_COLUMNS} FROM ota_releases ORDER BY created_ms DESC,"
                                      " release_id")
        return [Release(*r) for r in rows]

    async def release(self, release_id: str) -> Release | None:
        rows = await self.core._query(f"SELECT {RELEASE_COLUMNS} FROM ota_releases WHERE release_id = ?",
                                      (release_id,))
        return Release(*rows[0]) if rows else None

    async def delete_release(self, release_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            live = conn.execute(f"SELECT rollout_id FROM ota_rollouts WHERE release_id = ? AND state IN"
                                f" ({_marks(LIVE_ROLLOUTS)}) LIMIT 1", (release_id, *LIVE_ROLLOUTS)).fetchone()
            if live:
                raise OtaError("release_in_use", f"release {release_id} is used by rollout {live[0]}; abort it first")
            conn.execute("DELETE FROM ota_files WHERE release_id = ?", (release_id,))
            return conn.execute("DELETE FROM ota_releases WHERE release_id = ?", (release_id,)).rowcount > 0

        return await self.core._write(op)

    async def chunk(self, release_id: str, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        rows = await self.core._query("SELECT substr(data, ?, ?), length(data) FROM ota_files"
                                      " WHERE release_id = ? AND name = ?", (offset + 1, length, release_id, name))
        if not rows:
            return None
        return bytes(rows[0][0] or b""), int(rows[0][1])

    async def create_rollout(self, rollout: Rollout, members: list[Member]) -> None:
        r = rollout

        def op(conn: sqlite3.Connection) -> None:
            if not conn.execute("SELECT 1 FROM ota_releases WHERE release_id = ?", (r.release_id,)).fetchone():
                raise OtaError("no_such_release", f"release {r.release_id} does not exist")
            conn.execute(f"INSERT INTO ota_rollouts ({ROLLOUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (r.rollout_id, r.release_id, r.state, r.target, r.canary_pct, r.max_failures, r.created_ms,
                          r.updated_ms, r.reason))
            conn.executemany("INSERT INTO ota_members (rollout_id, device_id, canary, state, reason, updated_ms)"
                             " VALUES (?, ?, ?, ?, ?, ?)",
                             [(m.rollout_id, m.device_id, int(m.canary), m.state, m.reason, m.updated_ms)
                              for m in members])

        await self.core._write(op)

    async def rollouts(self, states: tuple[str, ...] = ROLLOUT_STATES) -> list[Rollout]:
        rows = await self.core._query(f"SELECT {ROLLOUT_COLUMNS} FROM ota_rollouts WHERE state IN ({_marks(states)})"
                                      " ORDER BY created_ms DESC, rollout_id", states)
        return [rollout_row(r) for r in rows]

    async def rollout(self, rollout_id: str) -> Rollout | None:
        rows = await self.core._query(f"SELECT {ROLLOUT_COLUMNS} FROM ota_rollouts WHERE rollout_id = ?",
                                      (rollout_id,))
        return rollout_row(rows[0]) if rows else None

    async def members(self, rollout_id: str) -> list[Member]:
        rows = await self.core._query("SELECT rollout_id, device_id, canary, state, reason, updated_ms FROM ota_members"
                                      " WHERE rollout_id = ? ORDER BY device_id", (rollout_id,))
        return [Member(r[0], r[1], bool(r[2]), r[3], r[4], int(r[5])) for r in rows]

    async def set_rollout_state(self, rollout_id: str, state: str, reason: str, now_ms: int,
                                expect: tuple[str, ...]) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(f"UPDATE ota_rollouts SET state = ?, reason = ?, updated_ms = ? WHERE rollout_id = ?"
                                f" AND state IN ({_marks(expect)})",
                                (state, reason, now_ms, rollout_id, *expect)).rowcount > 0

        return await self.core._write(op)

    async def set_member(self, rollout_id: str, device_id: str, state: str, reason: str, now_ms: int,
                         expect: tuple[str, ...]) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(f"UPDATE ota_members SET state = ?, reason = ?, updated_ms = ? WHERE rollout_id = ?"
                                f" AND device_id = ? AND state IN ({_marks(expect)})",
                                (state, reason, now_ms, rollout_id, device_id, *expect)).rowcount > 0

        return await self.core._write(op)

    async def offered(self, device_id: str, release_id: str) -> bool:
        rows = await self.core._query(
            f"SELECT 1 FROM ota_members m JOIN ota_rollouts r ON r.rollout_id = m.rollout_id WHERE m.device_id = ?"
            f" AND r.release_id = ? AND m.state != ? AND r.state IN ({_marks(LIVE_ROLLOUTS)}) LIMIT 1",
            (device_id, release_id, PENDING, *LIVE_ROLLOUTS))
        return bool(rows)

    async def record_report(self, report: DeviceReport) -> int:
        p = report

        def op(conn: sqlite3.Connection) -> int:
            conn.execute(f"INSERT INTO ota_reports ({REPORT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                         " ON CONFLICT (device_id) DO UPDATE SET release_id = excluded.release_id, state ="
                         " excluded.state, reason = excluded.reason, done = excluded.done, total = excluded.total,"
                         " updated_ms = excluded.updated_ms",
                         (p.device_id, p.release_id, p.state, p.reason, p.done, p.total, p.updated_ms))
            skip = (PENDING, *FINAL_STATES)
            return int(conn.execute(
                f"UPDATE ota_members SET state = ?, reason = ?, updated_ms = ? WHERE device_id = ?"
                f" AND state NOT IN ({_marks(skip)}) AND rollout_id IN (SELECT rollout_id FROM ota_rollouts"
                f" WHERE release_id = ? AND state IN ({_marks(LIVE_ROLLOUTS)}))",
                (p.state, p.reason, p.updated_ms, p.device_id, *skip, p.release_id, *LIVE_ROLLOUTS)).rowcount)

        return await self.core._write(op)

    async def reports(self) -> list[DeviceReport]:
        rows = await self.core._query(f"SELECT {REPORT_COLUMNS} FROM ota_reports ORDER BY device_id")
        return [report_row(r) for r in rows]
