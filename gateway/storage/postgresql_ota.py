"""PostgreSQL: the OTA store (gateway/storage/ota_base.py) on a PostgresStorage's pool."""

from __future__ import annotations

import asyncpg

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
from gateway.storage.postgresql_core import PostgresCore
from gateway.storage.sqlite_ota import RELEASE_COLUMNS, REPORT_COLUMNS, ROLLOUT_COLUMNS, report_row, rollout_row


def _release(r: asyncpg.Record) -> Release:
    return Release(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]))


class PostgresOta:
    def __init__(self, core: PostgresCore) -> None:
        self.core = core

    async def put_release(self, release: Release, files: dict[str, bytes]) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                status = await conn.execute(
                    f"INSERT INTO ota_releases ({RELEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (release_id) DO NOTHING", release.release_id, release.kind, release.version,
                    release.manifest, release.sig, release.created_ms, release.size)
                if status.endswith(" 0"):
                    return False
                await conn.executemany("INSERT INTO ota_files (release_id, name, data) VALUES ($1, $2, $3)",
                                       [(release.release_id, name, data) for name, data in files.items()])
                return True

        return await self.core._with_conn(run)

    async def releases(self) -> list[Release]:
        rows = await self.core._fetch(f"SELECT {RELEASE_COLUMNS} FROM ota_releases ORDER BY created_ms DESC,"
                                      " release_id")
        return [_release(r) for r in rows]

    async def release(self, release_id: str) -> Release | None:
        rows = await self.core._fetch(f"SELECT {RELEASE_COLUMNS} FROM ota_releases WHERE release_id = $1",
                                      release_id)
        return _release(rows[0]) if rows else None

    async def delete_release(self, release_id: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                # The release row locked first: a rollout created meanwhile waits (it reads it FOR SHARE).
                exists = await conn.fetchval("SELECT 1 FROM ota_releases WHERE release_id = $1 FOR UPDATE",
                                             release_id)
                live = await conn.fetchval("SELECT rollout_id FROM ota_rollouts WHERE release_id = $1"
                                           " AND state = ANY($2::text[]) LIMIT 1", release_id, list(LIVE_ROLLOUTS))
                if live:
                    raise OtaError("release_in_use", f"release {release_id} is used by rollout {live}; abort it first")
                await conn.execute("DELETE FROM ota_files WHERE release_id = $1", release_id)
                await conn.execute("DELETE FROM ota_releases WHERE release_id = $1", release_id)
                return bool(exists)

        return await self.core._with_conn(run)

    async def chunk(self, release_id: str, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        rows = await self.core._fetch("SELECT substring(data FROM $3 FOR $4), length(data) FROM ota_files"
                                      " WHERE release_id = $1 AND name = $2", release_id, name, offset + 1, length)
        if not rows:
            return None
        return bytes(rows[0][0]), int(rows[0][1])

    async def create_rollout(self, rollout: Rollout, members: list[Member]) -> None:
        r = rollout

        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                if not await conn.fetchval("SELECT 1 FROM ota_releases WHERE release_id = $1 FOR SHARE",
                                           r.release_id):
                    raise OtaError("no_such_release", f"release {r.release_id} does not exist")
                await conn.execute(f"INSERT INTO ota_rollouts ({ROLLOUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6,"
                                   " $7, $8, $9)", r.rollout_id, r.release_id, r.state, r.target, r.canary_pct,
                                   r.max_failures, r.created_ms, r.updated_ms, r.reason)
                await conn.executemany("INSERT INTO ota_members (rollout_id, device_id, canary, state, reason,"
                                       " updated_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                                       [(m.rollout_id, m.device_id, m.canary, m.state, m.reason, m.updated_ms)
                                        for m in members])

        await self.core._with_conn(run)

    async def rollouts(self, states: tuple[str, ...] = ROLLOUT_STATES) -> list[Rollout]:
        rows = await self.core._fetch(f"SELECT {ROLLOUT_COLUMNS} FROM ota_rollouts WHERE state = ANY($1::text[])"
                                      " ORDER BY created_ms DESC, rollout_id", list(states))
        return [rollout_row(r) for r in rows]

    async def rollout(self, rollout_id: str) -> Rollout | None:
        rows = await self.core._fetch(f"SELECT {ROLLOUT_COLUMNS} FROM ota_rollouts WHERE rollout_id = $1", rollout_id)
        return rollout_row(rows[0]) if rows else None

    async def members(self, rollout_id: str) -> list[Member]:
        rows = await self.core._fetch("SELECT rollout_id, device_id, canary, state, reason, updated_ms FROM ota_members"
                                      " WHERE rollout_id = $1 ORDER BY device_id", rollout_id)
        return [Member(r[0], r[1], bool(r[2]), r[3], r[4], int(r[5])) for r in rows]

    async def set_rollout_state(self, rollout_id: str, state: str, reason: str, now_ms: int,
                                expect: tuple[str, ...]) -> bool:
        status = await self.core._execute("UPDATE ota_rollouts SET state = $1, reason = $2, updated_ms = $3"
                                          " WHERE rollout_id = $4 AND state = ANY($5::text[])",
                                          state, reason, now_ms, rollout_id, list(expect))
        return not status.endswith(" 0")

    async def set_member(self, rollout_id: str, device_id: str, state: str, reason: str, now_ms: int,
                         expect: tuple[str, ...]) -> bool:
        status = await self.core._execute("UPDATE ota_members SET state = $1, reason = $2, updated_ms = $3"
                                          " WHERE rollout_id = $4 AND device_id = $5 AND state = ANY($6::text[])",
                                          state, reason, now_ms, rollout_id, device_id, list(expect))
        return not status.endswith(" 0")

    async def offered(self, device_id: str, release_id: str) -> bool:
        rows = await self.core._fetch(
            "SELECT 1 FROM ota_members m JOIN ota_rollouts r ON r.rollout_id = m.rollout_id WHERE m.device_id = $1"
            " AND r.release_id = $2 AND m.state != $3 AND r.state = ANY($4::text[]) LIMIT 1",
            device_id, release_id, PENDING, list(LIVE_ROLLOUTS))
        return bool(rows)

    async def record_report(self, report: DeviceReport) -> int:
        p = report

        async def run(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO ota_reports ({REPORT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (device_id) DO UPDATE SET release_id = excluded.release_id, state = excluded.state,"
                    " reason = excluded.reason, done = excluded.done, total = excluded.total,"
                    " updated_ms = excluded.updated_ms",
                    p.device_id, p.release_id, p.state, p.reason, p.done, p.total, p.updated_ms)
                status: str = await conn.execute(
                    "UPDATE ota_members SET state = $1, reason = $2, updated_ms = $3 WHERE device_id = $4"
                    " AND state <> ALL($5::text[]) AND rollout_id IN (SELECT rollout_id FROM ota_rollouts"
                    " WHERE release_id = $6 AND state = ANY($7::text[]))",
                    p.state, p.reason, p.updated_ms, p.device_id, [PENDING, *FINAL_STATES], p.release_id,
                    list(LIVE_ROLLOUTS))
                return int(status.rsplit(" ", 1)[-1])

        return await self.core._with_conn(run)

    async def reports(self) -> list[DeviceReport]:
        rows = await self.core._fetch(f"SELECT {REPORT_COLUMNS} FROM ota_reports ORDER BY device_id")
        return [report_row(r) for r in rows]
