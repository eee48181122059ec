"""Conformance: alerts, their history, stored rules and baselines (the alert engine's storage)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from gateway.errors import StorageError
from gateway.storage import postgresql as pg_mod
from gateway.storage import sqlite as sqlite_mod
from gateway.storage.base import AlertHistoryRow, AlertRow, BaselineRow, Storage, StoredRule
from tests.gateway.storage.conftest import Backend


def alert(device: str = "A", rule: str = "t_hot", at: int = 1000, value: float | None = 31.0) -> AlertRow:
    return AlertRow(0, device, "temperature", rule, at, value, kind="above", severity="major",
                    text="temperature 31 °C above 30 °C", last_value=value, updated_ms=at)


def entry(event: str, at: int, by: str | None = None, value: float | None = None, text: str = "") -> AlertHistoryRow:
    return AlertHistoryRow(0, at, event, by, value, text)


def test_alerts_are_inserted_updated_and_listed(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        a1, a2, a3 = alert("A"), alert("B", at=2000, value=35.0), alert("A", "offline", 3000, None)
        ids = await s.save_alerts([(a1, entry("raised", 1000, value=31.0)), (a2, entry("raised", 2000)),
                                   (a3, entry("raised", 3000))])
        assert ids == [a1.alert_id, a2.alert_id, a3.alert_id] and len(set(ids)) == 3 and 0 not in ids
        assert [a.alert_id for a in await s.active_alerts()] == [a3.alert_id, a2.alert_id, a1.alert_id]
        assert [a.alert_id for a in await s.active_alerts(limit=2)] == [a3.alert_id, a2.alert_id]
        assert (await s.alert(a3.alert_id)).value is None  # type: ignore[union-attr]

        a1.state, a1.acked_ms, a1.acked_by, a1.updated_ms = "acknowledged", 1500, "admin", 1500
        await s.save_alerts([(a1, entry("acknowledged", 1500, "admin"))])
        a1.state, a1.cleared_ms, a1.cleared_by, a1.clear_value, a1.clear_reason = "cleared", 4000, "auto", 28.5, "ok"
        a2.state, a2.suspended_ms = "suspended", 4000
        await s.save_alerts([(a1, entry("cleared", 4000, "auto", 28.5)), (a2, entry("suspended", 4000))])

        stored = await s.alert(a1.alert_id)
        assert stored is not None
        assert (stored.state, stored.acked_by, stored.acked_ms, stored.cleared_ms, stored.cleared_by,
                stored.clear_value, stored.clear_reason, stored.text, stored.severity, stored.kind) == (
            "cleared", "admin", 1500, 4000, "auto", 28.5, "ok", "temperature 31 °C above 30 °C", "major", "above")
        assert [a.alert_id for a in await s.active_alerts()] == [a3.alert_id, a2.alert_id]
        assert (await s.alert(a2.alert_id)).suspended_ms == 4000  # type: ignore[union-attr]
        assert await s.alert(10**9) is None

        assert [a.alert_id for a in await s.alerts()] == [a3.alert_id, a2.alert_id, a1.alert_id]
        assert [a.alert_id for a in await s.alerts("A")] == [a3.alert_id, a1.alert_id]
        assert [a.alert_id for a in await s.alerts(limit=1)] == [a3.alert_id]
        assert [a.alert_id for a in await s.alerts(before_id=a3.alert_id)] == [a2.alert_id, a1.alert_id]
        assert [a.alert_id for a in await s.alerts(state="cleared")] == [a1.alert_id]
        assert [a.alert_id for a in await s.alerts("B", state="suspended")] == [a2.alert_id]

        history = await s.alert_history(a1.alert_id)
        assert [(h.alert_id, h.at_ms, h.event, h.by, h.value) for h in history] == [
            (a1.alert_id, 1000, "raised", None, 31.0), (a1.alert_id, 1500, "acknowledged", "admin", None),
            (a1.alert_id, 4000, "cleared", "auto", 28.5)]
        assert len(await s.alert_history(a1.alert_id, limit=2)) == 2
        assert await s.alert_history(10**9) == []

    backend.run(body)


def test_a_raise_and_its_clear_in_one_call(backend: Backend) -> None:
    """An update of an alert inserted earlier in the same call cannot name its id; the engine splits
    such batches, but a batch whose rows are all new or all known is one transaction."""

    async def body(s: Storage) -> None:
        rows = [alert(f"D{i}") for i in range(50)]
        ids = await s.save_alerts([(r, entry("raised", 1000)) for r in rows])
        assert ids == sorted(ids)
        for r in rows:
            r.state = "cleared"
            r.cleared_ms = 2000
        await s.save_alerts([(r, entry("cleared", 2000)) for r in rows])
        assert await s.active_alerts() == []
        assert len(await s.alerts(limit=1000)) == 50

    backend.run(body)


def test_rules_and_tombstones(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        assert await s.alert_rules() == []
        spec = {"id": "hot", "type": "above", "metric": "temperature", "above": 30.0, "devices": ["S-*"]}
        await s.put_alert_rule(StoredRule("hot", spec, 1000, "admin"))
        await s.put_alert_rule(StoredRule("cold", None, 1001, "admin"))
        assert await s.alert_rules() == [StoredRule("cold", None, 1001, "admin"),
                                         StoredRule("hot", spec, 1000, "admin")]
        spec2 = dict(spec, above=35.0)
        await s.put_alert_rule(StoredRule("hot", spec2, 2000, "ops"))
        await s.put_alert_rule(StoredRule("cold", {"id": "cold", "type": "below"}, 2001, "ops"))
        assert await s.alert_rules() == [StoredRule("cold", {"id": "cold", "type": "below"}, 2001, "ops"),
                                         StoredRule("hot", spec2, 2000, "ops")]

    backend.run(body)


def test_baselines(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        await s.save_baselines([])
        await s.save_baselines([BaselineRow("r1", "A", '{"m": 1}', 10), BaselineRow("r1", "B", '{"m": 2}', 10),
                                BaselineRow("r2", "A", "[1, 2]", 10)])
        await s.save_baselines([BaselineRow("r1", "A", '{"m": 3}', 20)])
        rows = sorted(await s.load_baselines(), key=lambda r: (r.rule_id, r.device_id))
        assert rows == [BaselineRow("r1", "A", '{"m": 3}', 20), BaselineRow("r1", "B", '{"m": 2}', 10),
                        BaselineRow("r2", "A", "[1, 2]", 10)]
        assert await s.delete_baselines(device_id="A") == 2
        assert await s.delete_baselines(rule_id="r1", device_id="B") == 1
        assert await s.load_baselines() == []
        with pytest.raises(ValueError):
            await s.delete_baselines()

    backend.run(body)


def test_alerts_survive_a_restart(backend: Backend) -> None:
    async def write(s: Storage) -> int:
        row = alert()
        await s.save_alerts([(row, entry("raised", 1000))])
        row.state, row.acked_by, row.acked_ms = "acknowledged", "admin", 1100
        await s.save_alerts([(row, entry("acknowledged", 1100, "admin"))])
        return row.alert_id

    alert_id = backend.run(write)

    async def read(s: Storage) -> None:
        (row,) = await s.active_alerts()
        assert (row.alert_id, row.state, row.acked_by) == (alert_id, "acknowledged", "admin")
        assert [h.event for h in await s.alert_history(alert_id)] == ["raised", "acknowledged"]

    backend.run(read)


def test_a_failed_batch_stores_nothing(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        good = alert("A")
        bad = alert("B")
        bad.device_id = None  # type: ignore[assignment]  # NOT NULL: the database refuses it
        with pytest.raises(StorageError):
            await s.save_alerts([(good, entry("raised", 1000)), (bad, entry("raised", 1000))])
        assert good.alert_id == 0
        assert await s.alerts() == []

    backend.run(body)


# -- migration from the previous schema (old alert rows keep their history)

OLD_ROWS = [("A", "temperature", "temperature > 30", 1000, 31.0, None, None),
            ("B", "temperature", "temperature > 30", 2000, 33.0, 3000, 28.0)]


def _old_sqlite(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for script in sqlite_mod.MIGRATIONS[:2]:
            for statement in sqlite_mod._split_script(script):
                conn.execute(statement)
        conn.executemany("INSERT INTO alerts (device_id, metric, rule, raised_ms, value, cleared_ms, clear_value)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)", OLD_ROWS)
        conn.execute("PRAGMA user_version = 2")


async def _old_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(pg_mod.MIGRATIONS[0])
        await conn.execute("CREATE TABLE edgewire_schema (version integer NOT NULL)")
        await conn.execute("INSERT INTO edgewire_schema VALUES (1)")
        await conn.executemany("INSERT INTO alerts (device_id, metric, rule, raised_ms, value, cleared_ms, clear_value)"
                               " VALUES ($1, $2, $3, $4, $5, $6, $7)", OLD_ROWS)
    finally:
        await conn.close()


def test_previous_schema_alerts_are_migrated(backend: Backend) -> None:
    if backend.name == "sqlite":
        _old_sqlite(Path(backend.target))
    else:
        asyncio.run(_old_postgres(backend.target))

    async def body(s: Storage) -> None:
        rows = await s.alerts()
        assert [(r.device_id, r.rule, r.kind, r.severity, r.state, r.text, r.value, r.cleared_ms, r.cleared_by,
                 r.updated_ms) for r in rows] == [
            ("B", "temperature > 30", "above", "major", "cleared", "temperature > 30", 33.0, 3000, "auto", 3000),
            ("A", "temperature > 30", "above", "major", "active", "temperature > 30", 31.0, None, None, 1000)]
        assert [r.device_id for r in await s.active_alerts()] == ["A"]
        assert [(h.event, h.at_ms, h.value) for h in await s.alert_history(rows[0].alert_id)] == [
            ("raised", 2000, 33.0), ("cleared", 3000, 28.0)]
        new = alert("C", value=None)  # the value column now takes none
        await s.save_alerts([(new, entry("raised", 5000))])
        assert new.alert_id > rows[0].alert_id

    backend.run(body)
