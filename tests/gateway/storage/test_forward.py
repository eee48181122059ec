"""Conformance: the forward log (storage order), sink cursors and leases, device deletion."""

from __future__ import annotations

import asyncpg

from gateway.storage.base import DeviceRecord, LogPosition, ReadingRow, Storage
from tests.gateway.storage.conftest import DAY, T0, Backend, row

LEASE = 10_000


async def drain(s: Storage, position: LogPosition, limit: int = 7) -> tuple[list[ReadingRow | None], LogPosition]:
    """Every reading after ``position``, read in pages of ``limit``; and the position after the last."""
    out: list[ReadingRow | None] = []
    while True:
        page = await s.readings_after(position, limit)
        if not page:
            return out, position
        assert len(page) <= limit
        for pos, reading in page:
            assert pos > position  # positions only grow
            position = pos
            out.append(reading)


def keys(readings: list[ReadingRow | None]) -> list[tuple[str, int] | None]:
    return [None if r is None else (r.device_id, r.seq) for r in readings]


def test_a_new_sink_starts_at_the_end_and_reads_commit_order(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        await s.store([row("A", 1), row("A", 2)])  # before any sink: not forwarded
        start = await s.claim_sink("mqtt", "gw1", T0, LEASE)
        assert start is not None
        assert await s.readings_after(start) == []
        await s.store([row("B", 2), row("A", 3), row("B", 1)])  # one commit: (device, seq) order
        await s.store([row("A", 4)])
        await s.store([row("A", 4), row("A", 3)])  # duplicates are not stored, so not logged
        await s.store([row("A", 2)])  # an old seq stored before: a duplicate too
        await s.store([row("C", 9, temperature=1.5)])
        got, end = await drain(s, start, limit=2)
        assert keys(got) == [("A", 3), ("B", 1), ("B", 2), ("A", 4), ("C", 9)]
        full = got[-1]
        assert full is not None and full.metrics == {"temperature": 1.5} and full.quality == "ok"
        assert full.time_ms == T0 + 9000 and full.received_ms == T0 + 9005 and full.boot == "b1"
        assert await s.readings_after(end) == []
        # Any position read back resumes right after it, also inside a commit.
        page = await s.readings_after(start, 2)
        assert keys([r for _, r in await s.readings_after(page[0][0], 3)]) == [("B", 1), ("B", 2), ("A", 4)]
        assert await s.readings_after(start, 0) == []

    backend.run(body)


def test_lease_cursor_and_takeover(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        start = await s.claim_sink("mqtt", "gw1", T0, LEASE)
        assert start is not None
        assert await s.claim_sink("mqtt", "gw2", T0 + 1, LEASE) is None  # gw1's lease runs
        await s.store([row("A", 1), row("A", 2)])
        page = await s.readings_after(start)
        mid = page[0][0]
        assert await s.advance_sink("mqtt", "gw1", mid, T0 + 2, LEASE) is True
        assert await s.advance_sink("mqtt", "gw2", page[1][0], T0 + 2, LEASE) is False  # not the owner
        assert await s.claim_sink("mqtt", "gw1", T0 + 3, LEASE) == mid  # renewal returns the cursor
        assert await s.advance_sink("mqtt", "gw1", start, T0 + 4, LEASE) is True  # never moves back
        cursors = await s.sink_cursors()
        assert [(c.sink, c.position, c.owner, c.lease_until_ms) for c in cursors] == [
            ("mqtt", mid, "gw1", T0 + 4 + LEASE)]
        # The lease runs out: gw2 takes over from the stored cursor, gw1 is fenced off.
        assert await s.claim_sink("mqtt", "gw2", T0 + 4 + LEASE, LEASE) == mid
        assert await s.advance_sink("mqtt", "gw1", page[1][0], T0 + 5 + LEASE, LEASE) is False
        assert keys([r for _, r in await s.readings_after(mid)]) == [("A", 2)]
        # Another process of the same instance (a restart after a crash) takes over at once; the old one is fenced.
        assert await s.claim_sink("mqtt", "gw2/200", T0 + 5 + LEASE, LEASE) == mid
        assert await s.claim_sink("mqtt", "gw2/300", T0 + 5 + LEASE, LEASE) == mid
        assert await s.advance_sink("mqtt", "gw2/200", page[1][0], T0 + 6 + LEASE, LEASE) is False
        assert await s.claim_sink("mqtt", "gw1", T0 + 6 + LEASE, LEASE) is None  # another instance waits
        await s.release_sink("mqtt", "gw2/300")
        # A release hands it over at once; other sinks are separate.
        assert await s.claim_sink("mqtt", "gw1", T0 + 6 + LEASE, LEASE) == mid
        assert await s.claim_sink("nats", "gw2", T0, LEASE) is not None
        assert [c.sink for c in await s.sink_cursors()] == ["mqtt", "nats"]

    backend.run(body)


def test_cursor_survives_a_restart(backend: Backend) -> None:
    async def first(s: Storage) -> LogPosition:
        start = await s.claim_sink("mqtt", "gw1", T0, LEASE)
        assert start is not None
        await s.store([row("A", seq) for seq in range(1, 6)])
        page = await s.readings_after(start, 3)
        assert await s.advance_sink("mqtt", "gw1", page[-1][0], T0, LEASE)
        return page[-1][0]

    cursor = backend.run(first)

    async def second(s: Storage) -> None:
        assert await s.claim_sink("mqtt", "gw1", T0 + 1, LEASE) == cursor  # same owner: no wait
        await s.store([row("A", 6)])  # the log is still written after the restart
        got, _ = await drain(s, cursor)
        assert keys(got) == [("A", 4), ("A", 5), ("A", 6)]

    backend.run(second)


def test_trim_and_retention(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        day0 = T0 - T0 % DAY
        for day in range(3):
            await s.prepare(day0 + day * DAY)
        start = await s.claim_sink("mqtt", "gw1", T0, LEASE)
        assert start is not None
        old = [row("A", i, time_ms=day0 + i) for i in range(1, 4)]
        for reading in old:
            reading.received_ms = day0 + 10
        await s.store(old)
        await s.store([row("A", 4, time_ms=day0 + 2 * DAY)])
        await s.store([row("A", 5, time_ms=day0 + 2 * DAY + 1)])
        page = await s.readings_after(start)
        assert len(page) == 5
        # Nothing passed yet, nothing old enough: trimming keeps everything.
        assert await s.trim_forward_log(0) == 0
        assert await s.advance_sink("mqtt", "gw1", page[3][0], T0, LEASE)  # A 1-4 forwarded
        # The commit of A 1-3 is behind the cursor; the cursor sits at the end of A 4's commit,
        # which is kept (harmlessly) until the cursor moves past it.
        assert await s.trim_forward_log(0) == 1
        assert keys([r for _, r in await s.readings_after(page[3][0])]) == [("A", 5)]
        # A device clock far behind: retention deletes the reading before it was forwarded; its log
        # row (received recently) stays, so it comes back as None and the forwarder counts it.
        late = row("B", 1, time_ms=day0 + 5)
        late.received_ms = day0 + 2 * DAY
        await s.store([late])
        await s.expire(day0 + DAY, 0)
        got, end = await drain(s, page[3][0])
        assert keys(got) == [("A", 5), None]
        assert await s.advance_sink("mqtt", "gw1", end, T0, LEASE)
        # A log row trimmed by age before a sink passed it: counted in the sink's cursor.
        behind = await s.claim_sink("nats", "gw1", T0, LEASE)
        assert behind is not None
        await s.store([row("C", 1, time_ms=day0 + 2 * DAY), row("C", 2, time_ms=day0 + 2 * DAY)])
        page = await s.readings_after(behind)
        assert await s.advance_sink("nats", "gw1", page[0][0], T0, LEASE)  # C 1 forwarded, C 2 not
        assert await s.trim_forward_log(day0 + 3 * DAY) >= 1
        expired = {c.sink: c.expired for c in await s.sink_cursors()}
        assert expired == {"mqtt": 2, "nats": 1}  # mqtt had not passed C 1-2 either
        assert await s.readings_after(page[0][0]) == []
        # A sink that goes away no longer holds the log back; a new one starts at the end.
        assert await s.forget_sink("mqtt") is True
        assert await s.forget_sink("mqtt") is False
        assert await s.forget_sink("nats") is True
        assert await s.sink_cursors() == []
        await s.store([row("A", 6, time_ms=day0 + 2 * DAY + 2)])
        assert await s.trim_forward_log(0) == 0  # no sink: nothing was logged
        again = await s.claim_sink("mqtt", "gw1", T0, LEASE)
        assert again is not None and await s.readings_after(again) == []

    backend.run(body)


def test_delete_device(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        await s.put_device(DeviceRecord("S-1", True, b"\x01" * 32, [], "hall", 1, 1))
        await s.store([row("S-1", 1)])
        assert await s.delete_device("S-1") is True
        assert await s.delete_device("S-1") is False
        assert await s.get_device("S-1") is None
        assert await s.device_by_token_digest(b"\x01" * 32) is None
        assert await s.count_readings("S-1") == 1  # readings stay until retention

    backend.run(body)


def test_postgresql_late_commit_is_not_skipped(postgres_dsn: str) -> None:
    """Two writers: a transaction that began first but commits last is still read, in order."""
    from gateway.storage.postgresql import PostgresStorage

    async def body() -> None:
        s = PostgresStorage(postgres_dsn, clock=lambda: T0 / 1000)
        await s.open()
        slow = await asyncpg.connect(postgres_dsn)
        try:
            start = await s.claim_sink("mqtt", "gw1", T0, LEASE)
            assert start is not None
            tx = slow.transaction()
            await tx.start()
            # Another gateway's group commit, slow to commit: its transaction id is the older one.
            await slow.execute("INSERT INTO readings (device_id, seq, time_ms, received_ms, metrics)"
                               " VALUES ('Z', 1, $1, $1, '{\"temperature\": 1.0}')", T0)
            await slow.execute("INSERT INTO forward_log (created_ms, devices, seqs, times)"
                               " VALUES ($1, '{Z}', '{1}', ARRAY[$1::bigint])", T0)
            await s.store([row("A", 1)])  # commits first, with a newer transaction id
            assert await s.readings_after(start) == []  # held back while the older one runs
            await tx.commit()
            got, _ = await drain(s, start)
            assert keys(got) == [("Z", 1), ("A", 1)]
        finally:
            await slow.close()
            await s.close()

    import asyncio

    asyncio.run(body())


def test_register_then_another_process_forwards(backend: Backend) -> None:
    """The gateway registers the sink (and logs from then on); a forwarding worker with its own storage
    connection claims it and reads everything stored after the registration."""

    async def body(s: Storage) -> None:
        await s.store([row("A", 1)])  # before the registration: not forwarded
        await s.register_sink("mqtt", T0)
        await s.register_sink("mqtt", T0 + 5)  # idempotent: the cursor does not move
        [cursor] = await s.sink_cursors()
        assert (cursor.sink, cursor.owner, cursor.lease_until_ms) == ("mqtt", "", 0)
        await s.store([row("A", 2), row("B", 1)])
        worker = backend.make()
        await worker.open()
        try:
            start = await worker.claim_sink("mqtt", "gw1-worker", T0, LEASE)
            assert start == cursor.position
            got, _ = await drain(worker, start)
            assert keys(got) == [("A", 2), ("B", 1)]
        finally:
            await worker.close()

    backend.run(body)
