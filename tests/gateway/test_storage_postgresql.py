"""PostgresStorage specifics: daily partitions, lost connections, an unreachable server.

The behaviour it shares with SQLite is tested by the conformance suite (tests/gateway/storage/).
"""

from __future__ import annotations

import asyncio
import re
import time

import asyncpg
import pytest

from gateway.errors import ConfigError, StorageError
from gateway.storage.base import ReadingRow
from gateway.storage.postgresql import PostgresStorage, partition_day, partition_name
from services.postgres import PostgresServer

DAY = 86_400_000
T0 = 1_764_080_000_000
DAY0 = T0 - T0 % DAY  # 2025-11-25


def row(device: str, seq: int, time_ms: int) -> ReadingRow:
    return ReadingRow(device, seq, time_ms, time_ms + 5, {"temperature": 20.0 + seq % 7})


async def where_rows_are(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r[0]: r[1] for r in await conn.fetch(
            "SELECT tableoid::regclass::text, count(*) FROM readings GROUP BY 1")}
    finally:
        await conn.close()


def test_partition_names() -> None:
    assert partition_name(DAY0 // DAY) == "readings_p20251125"
    assert partition_day("readings_p20251125") == DAY0 // DAY
    assert partition_day("readings_default") is None and partition_day("readings_p2025") is None


def test_partitions_are_made_ahead_and_take_over_rows_from_the_default(postgres_dsn: str) -> None:
    clock = [T0 / 1000]

    async def main() -> None:
        s = PostgresStorage(postgres_dsn, partitions_ahead_days=2, clock=lambda: clock[0])
        await s.open()
        try:
            days = sorted((await s.partitions()).values())
            assert days == [DAY0 // DAY + d for d in range(-1, 3)]  # yesterday .. two days ahead
            await s.store([row("A", i, DAY0 + i * 3_600_000) for i in range(1, 24)])  # today
            await s.store([row("A", 100 + i, DAY0 + 10 * DAY + i) for i in range(5)])  # no partition yet
            await s.store([row("A", 200, 1000)])  # 1970
            assert await where_rows_are(postgres_dsn) == {"readings_p20251125": 23, "readings_default": 6}
            # Ten days later, the gateway's hourly upkeep makes that day's partition: the rows move into it.
            clock[0] += 10 * 86_400
            await s.prepare(int(clock[0] * 1000))
            assert await where_rows_are(postgres_dsn) == {"readings_p20251125": 23, "readings_p20251205": 5,
                                                          "readings_default": 1}
            assert await s.seqs("A") == [*range(1, 24), *range(100, 105), 200]
            # Expire keeps the day that holds the cut-off, drops the whole days before it.
            result = await s.expire(DAY0 + DAY // 2, 0)
            assert (result.readings, result.partitions) == (1, 1)  # 1970; the empty partition of the 24th
            assert "readings_p20251125" in await s.partitions()
            result = await s.expire(DAY0 + DAY, 0)
            assert (result.readings, result.partitions) == (23, 1)
            assert await s.count_readings() == 5
        finally:
            await s.close()

    asyncio.run(main())


def test_two_gateways_preparing_at_once(postgres_dsn: str) -> None:
    async def main() -> None:
        gateways = [PostgresStorage(postgres_dsn, clock=lambda: T0 / 1000) for _ in range(3)]
        await asyncio.gather(*(g.open() for g in gateways))  # migrations and partitions race
        try:
            later = T0 + 20 * DAY
            await asyncio.gather(*(g.prepare(later) for g in gateways))
            names = await gateways[0].partitions()
            assert len(names) == 10 and len(set(names.values())) == 10
        finally:
            await asyncio.gather(*(g.close() for g in gateways))

    asyncio.run(main())


def test_lost_connection_is_never_acknowledged_and_reconnects_by_itself(postgres_server: PostgresServer,
                                                                          postgres_dsn: str) -> None:
    """The server kills the gateway's sessions mid-stream: stores fail or reconnect, never ack a lost row."""
    database = postgres_dsn.rsplit("/", 1)[1]

    async def main() -> None:
        s = PostgresStorage(postgres_dsn, commit_interval_ms=1, clock=lambda: T0 / 1000)
        await s.open()
        acked: list[int] = []
        failures = 0
        try:
            for seq in range(1, 301):
                if seq % 60 == 0:
                    postgres_server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                         f"'{database}' AND pid <> pg_backend_pid()")
                while True:  # as a device does: resend until acknowledged
                    try:
                        await s.store([row("A", seq, T0 + seq)])
                        acked.append(seq)
                        break
                    except StorageError:
                        failures += 1
                        await asyncio.sleep(0.05)
            assert await s.seqs("A") == list(range(1, 301)) == acked
            assert s.reconnects >= 5  # the writer reconnected after each kill
            assert await s.last_seq("A") == 300  # reads come back too
        finally:
            await s.close()

    asyncio.run(main())


def test_stopped_server_fails_fast_then_recovers(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    async def main() -> None:
        s = PostgresStorage(postgres_dsn, clock=lambda: T0 / 1000)
        await s.open()
        try:
            await s.store([row("A", 1, T0)])
            await asyncio.get_running_loop().run_in_executor(None, lambda: postgres_server.stop("immediate"))
            started = time.monotonic()
            with pytest.raises(StorageError, match="PostgreSQL"):
                await s.store([row("A", 2, T0 + 1)])
            with pytest.raises(StorageError, match="unreachable"):
                await s.last_seq("A")
            assert time.monotonic() - started < 5  # refused at once, not hung
            await asyncio.get_running_loop().run_in_executor(None, postgres_server.start)
            deadline = time.monotonic() + 30
            while True:
                try:
                    await s.store([row("A", 2, T0 + 1)])
                    break
                except StorageError:
                    assert time.monotonic() < deadline, "no reconnect within 30 s"
                    await asyncio.sleep(0.1)
            assert await s.seqs("A") == [1, 2]
        finally:
            if not postgres_server.running:
                postgres_server.start()
            await s.close()

    asyncio.run(main())


def test_unreachable_server_and_bad_urls() -> None:
    async def main() -> None:
        with pytest.raises(StorageError, match=re.escape("cannot connect to PostgreSQL at postgresql://u:***@127.0.0.1:1/x")):
            await PostgresStorage("postgresql://u:secret@127.0.0.1:1/x", connect_timeout_s=2).open()

    asyncio.run(main())
    with pytest.raises(ConfigError):
        PostgresStorage("postgresql://127.0.0.1:5432/")
    with pytest.raises(ConfigError):
        PostgresStorage("postgresql://127.0.0.1:5432/db", max_batch_rows=0)
