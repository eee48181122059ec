"""The alert life cycle: acknowledge, clear by hand, offline suspension, deleted devices, rules
edited through the engine, restarts (restore correct and bounded), storage failures, listeners."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts.model import AlertEvent
from gateway.errors import AlertError, StorageError
from gateway.storage.base import AlertHistoryRow, AlertRow, DeviceRecord
from gateway.storage.sqlite import SQLiteStorage
from tests.gateway.alerts.harness import DAY, MIN, T0, Harness

HOT = {"id": "hot", "metric": "temperature", "above": 30, "hysteresis": 1}
SILENT = {"id": "silent", "type": "no_data", "min_s": 30}


def test_acknowledge_then_clear_with_history(tmp_path: Path) -> None:
    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT]) as h:
            h.feed("S-1", {"temperature": 31.0}, T0)
            await h.settle()
            (alert,) = h.open()
            h.clock.ms = T0 + 5000
            acked = await h.engine.ack(alert["id"], "admin", "on my way")
            assert (acked["state"], acked["acked_by"], acked["acked"]) == ("acknowledged", "admin", T0 + 5000)
            assert await h.engine.ack(alert["id"], "someone else") == acked  # idempotent
            h.feed("S-1", {"temperature": 28.0}, T0 + 9000)
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "hot"), ("acknowledged", "S-1", "hot"), ("cleared", "S-1", "hot")]
            assert [e.by for e in h.events] == [None, "admin", "auto"]
            assert h.open() == []
            full = await h.engine.alert(alert["id"])
            assert [(e["event"], e["by"], e["at"]) for e in full["history"]] == [
                ("raised", None, T0), ("acknowledged", "admin", T0 + 5000), ("cleared", "auto", T0 + 9000)]
            assert full["history"][1]["text"] == "on my way"
            with pytest.raises(AlertError) as err:
                await h.engine.ack(alert["id"], "admin")
            assert err.value.code == "alert_cleared"
            with pytest.raises(AlertError) as err:
                await h.engine.clear(999, "admin")
            assert err.value.code == "no_such_alert"
            with pytest.raises(AlertError) as err:
                await h.engine.ack("1", "admin")
            assert err.value.code == "bad_request"
            listed = await h.engine.alerts(device_id="S-1", state="cleared")
            assert [a["id"] for a in listed] == [alert["id"]]

    asyncio.run(body())


def test_clear_by_hand_rearms_only_after_the_condition_ends(tmp_path: Path) -> None:
    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT]) as h:
            h.feed("S-1", {"temperature": 31.0}, T0)
            await h.settle()
            (alert,) = h.open()
            cleared = await h.engine.clear(alert["id"], "ops")
            assert (cleared["state"], cleared["cleared_by"], cleared["clear_reason"]) == ("cleared", "ops",
                                                                                       "cleared by ops")
            h.series("S-1", "temperature", [32.0, 33.0], T0 + 1000, 1000)  # still hot: not raised again
            await h.settle()
            assert h.open() == []
            h.series("S-1", "temperature", [25.0, 31.0], T0 + 5000, 1000)  # ended once, then hot again
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "hot"), ("cleared", "S-1", "hot"), ("raised", "S-1", "hot")]

    asyncio.run(body())


def test_offline_suspends_value_alerts_and_the_return_resumes_or_clears_them(tmp_path: Path) -> None:
    rules = [HOT, {"id": "humid", "metric": "humidity", "above": 80}, SILENT]

    async def body() -> None:
        async with Harness(tmp_path / "a.db", rules) as h:
            t = h.series("S-1", "temperature", [20.0] * 5, T0, 10_000)
            h.feed("S-1", {"temperature": 35.0, "humidity": 90.0}, t)
            await h.settle()
            acked = h.open()[0]
            await h.engine.ack(acked["id"], "admin")
            h.engine.device_offline("S-1", t + 1000)
            h.engine.tick(t + 120_000)  # silent: the no_data alert is raised, and not suspended
            await h.settle()
            states = {a["rule"]: a["state"] for a in h.open()}
            assert states == {"hot": "suspended", "humid": "suspended", "silent": "active"}
            assert all(a["suspended"] == t + 1000 for a in h.open() if a["rule"] != "silent")
            # back: still hot (resumed, ack kept), humidity fine now (cleared), data again (cleared)
            h.engine.device_online("S-1", t + 130_000)
            h.feed("S-1", {"temperature": 34.0, "humidity": 50.0}, t + 131_000)
            await h.settle()
            (left,) = h.open()
            assert (left["rule"], left["state"], left["acked_by"], left["suspended"]) == (
                "hot", "acknowledged", "admin", None)
            assert sorted(h.kinds()[-3:]) == [("cleared", "S-1", "humid"), ("cleared", "S-1", "silent"),
                                              ("resumed", "S-1", "hot")]
            humid = [e for e in h.events if e.alert["rule"] == "humid"]
            assert [e.kind for e in humid] == ["raised", "suspended", "cleared"]
            assert humid[-1].alert["clear_reason"] == "humidity back below 80.0% (after the device came back)"

    asyncio.run(body())


def test_suspended_alerts_of_a_device_that_never_returns_expire(tmp_path: Path) -> None:
    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT], suspended_expiry_s=86400) as h:
            h.feed("S-1", {"temperature": 35.0}, T0)
            h.engine.device_offline("S-1", T0 + 1000)
            await h.settle()
            assert h.engine.expire_suspended(T0 + DAY) == 0
            assert h.engine.expire_suspended(T0 + DAY + 2000) == 1
            await h.settle()
            assert h.open() == [] and h.events[-1].alert["cleared_by"] == "system"
            assert "offline for more than 24 h" in h.events[-1].alert["clear_reason"]

    asyncio.run(body())


def test_a_deleted_device_has_its_alerts_cleared(tmp_path: Path) -> None:
    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT, {"id": "odd", "type": "anomaly", "metric": "temperature",
                                                     "warmup": 5}]) as h:
            t = h.series("S-1", "temperature", [20.0] * 10, T0, MIN)
            h.feed("S-1", {"temperature": 35.0}, t)
            h.feed("S-2", {"temperature": 35.0}, t)
            await h.engine.save_baselines()
            await h.settle()
            assert len(h.open()) == 3
            assert await h.engine.device_deleted("S-1", "admin") == 2
            await h.settle()
            assert [a["device"] for a in h.open()] == ["S-2"]
            assert {e.alert["clear_reason"] for e in h.events if e.kind == "cleared"} == {"device deleted by admin"}
            assert all(b.device_id != "S-1" for b in await h.storage.load_baselines())

    asyncio.run(body())


def test_devices_no_longer_registered_lose_their_alerts(tmp_path: Path) -> None:
    """Deleted with the CLI while the gateway ran, or while it was down: the registry is the truth."""
    db = tmp_path / "a.db"

    async def body() -> None:
        async with Harness(db, [HOT], registry_check_s=60, storage=SQLiteStorage(db)) as h:
            assert isinstance(h.storage, SQLiteStorage)
            await h.storage.put_device(DeviceRecord("S-1", True, None))
            await h.storage.put_device(DeviceRecord("S-2", True, None))
            h.feed("S-1", {"temperature": 35.0}, T0)
            h.feed("S-2", {"temperature": 35.0}, T0)
            await h.settle()
            assert await h.engine.reconcile_registry() == 0
            await h.storage.put_device(DeviceRecord("S-3", True, None))
            # the CLI deletes S-2 behind the gateway's back (Storage.delete_device lands with another branch)
            delete = "DELETE FROM devices WHERE device_id = 'S-2'"
            await h.storage._write(lambda conn: int(conn.execute(delete).rowcount))

    async def removed() -> None:
        async with Harness(db, [HOT], registry_check_s=60) as h:
            await h.settle()
            assert [(a["device"], a["state"]) for a in h.open()] == [("S-1", "suspended")]
            cleared = await h.storage.alerts(device_id="S-2")
            assert (cleared[0].state, cleared[0].clear_reason) == ("cleared", "device no longer in the registry")

    asyncio.run(body())
    asyncio.run(removed())


def test_rules_put_and_delete_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "a.db"

    async def first() -> None:
        async with Harness(db, [HOT]) as h:
            with pytest.raises(AlertError) as err:
                await h.engine.put_rule({"id": "cold", "metric": "temperature", "below": "five"}, "admin")
            assert (err.value.code, str(err.value)) == ("bad_rule", "rule (cold): below: must be a number, not 'five'")
            with pytest.raises(AlertError) as err:
                await h.engine.put_rule({"type": "below", "metric": "temperature", "above": 3}, "admin")
            assert "unknown key 'above'" in str(err.value)
            put = await h.engine.put_rule({"id": "cold", "metric": "temperature", "below": 5}, "admin")
            assert (put["type"], put["below"], put["source"], put["updated_by"]) == ("below", 5.0, "admin", "admin")
            h.feed("S-1", {"temperature": 35.0}, T0)
            await h.settle()
            # replacing the config file's rule by the admin's: same type and metric, its alert stays open
            await h.engine.put_rule(dict(HOT, above=33, severity="critical"), "admin")
            await h.settle()
            (alert,) = h.open()
            assert alert["severity"] == "critical"
            result = await h.engine.delete_rule("cold", "admin")
            assert result == {"rule": "cold", "cleared": 0}
            with pytest.raises(AlertError) as err:
                await h.engine.delete_rule("cold", "admin")
            assert err.value.code == "no_such_rule"

    async def second() -> None:
        async with Harness(db, [HOT, {"id": "cold", "metric": "temperature", "below": 0}]) as h:
            rules = {r["id"]: r for r in h.engine.rules()}
            assert set(rules) == {"hot"}  # "cold" of the config file stays deleted
            assert (rules["hot"]["above"], rules["hot"]["source"]) == (33.0, "admin")
            await h.engine.delete_rule("hot", "admin")
            await h.settle()
            assert h.open() == [] and h.events[-1].alert["clear_reason"] == "rule hot deleted by admin"

    asyncio.run(first())
    asyncio.run(second())


def test_restart_keeps_alerts_suspended_until_the_device_speaks(tmp_path: Path) -> None:
    db = tmp_path / "a.db"

    async def first() -> int:
        async with Harness(db, [HOT, SILENT]) as h:
            t = h.series("S-1", "temperature", [20.0] * 5, T0, 10_000)
            h.feed("S-1", {"temperature": 35.0}, t)
            h.feed("S-2", {"temperature": 35.0}, t)
            h.engine.tick(t + 100_000)  # S-1 has learned its interval: silent -> no_data
            await h.settle()
            alert_id = next(a["id"] for a in h.open() if a["device"] == "S-2")
            await h.engine.ack(alert_id, "admin")
            return int(alert_id)

    acked_id = asyncio.run(first())

    async def second() -> None:
        async with Harness(db, [HOT, SILENT], clock=None) as h:
            await h.settle()
            opened = {(a["device"], a["rule"]): a for a in h.open()}
            assert {k: a["state"] for k, a in opened.items()} == {
                ("S-1", "hot"): "suspended", ("S-2", "hot"): "suspended", ("S-1", "silent"): "active"}
            assert opened[("S-2", "hot")]["id"] == acked_id and opened[("S-2", "hot")]["acked_by"] == "admin"
            # the devices come back: S-1 cooled down (cleared), S-2 still hot (resumed, still acknowledged)
            h.feed("S-1", {"temperature": 21.0}, T0 + DAY)
            h.feed("S-2", {"temperature": 34.0}, T0 + DAY)
            await h.settle()
            assert [(a["device"], a["rule"], a["state"]) for a in h.open()] == [("S-2", "hot", "acknowledged")]
            # the restored alerts keep raising no duplicates
            h.feed("S-2", {"temperature": 36.0}, T0 + DAY + 1000)
            await h.settle()
            assert len(h.open()) == 1

    asyncio.run(second())


def _stale(count: int, rule: str = "hot", device: str = "S-{i}") -> list[tuple[AlertRow, AlertHistoryRow]]:
    return [(AlertRow(0, device.format(i=i), "temperature", rule, T0 + i, 31.0, kind="above"),
             AlertHistoryRow(0, T0 + i, "raised")) for i in range(count)]


def test_restore_clears_stale_alerts_and_is_bounded(tmp_path: Path) -> None:
    """765 alerts of a rule that no longer exists, duplicates and more open alerts than the bound:
    the restart clears what nobody could clear and loads at most max_open."""
    db = tmp_path / "a.db"

    async def seed() -> None:
        storage = SQLiteStorage(db)
        await storage.open()
        await storage.save_alerts(_stale(765, rule="temperature > 30"))  # the old engine's rows
        await storage.save_alerts(_stale(2, device="D-1"))  # a duplicate pair of (hot, D-1)
        await storage.save_alerts(_stale(300))
        await storage.close()

    asyncio.run(seed())

    async def restart() -> None:
        async with Harness(db, [HOT], max_open=200) as h:
            await h.settle()
            opened = h.open()
            assert len(opened) == 200 and all(a["state"] == "suspended" for a in opened)
            assert len(await h.storage.active_alerts()) == 200
            cleared = await h.storage.alerts(state="cleared", limit=2000)
            reasons = {a.clear_reason for a in cleared}
            assert len(cleared) == 765 + 2 + 100
            assert reasons == {"more than 200 open alerts at start (alert_max_open); the oldest were cleared"}

    asyncio.run(restart())

    async def second_restart() -> None:
        async with Harness(db, [HOT], max_open=1000) as h:
            await h.settle()
            assert len(h.open()) == 200

    asyncio.run(second_restart())


def test_restore_clears_orphans_and_duplicates(tmp_path: Path) -> None:
    db = tmp_path / "a.db"

    async def seed() -> None:
        storage = SQLiteStorage(db)
        await storage.open()
        await storage.save_alerts(_stale(3, rule="temperature > 30"))
        await storage.save_alerts(_stale(2, device="D-1"))
        await storage.close()

    asyncio.run(seed())

    async def restart() -> None:
        async with Harness(db, [HOT]) as h:
            await h.settle()
            (kept,) = h.open()
            assert kept["device"] == "D-1" and kept["id"] == 5  # the newest of the pair
            # stale alerts are cleared quietly: no listener (webhook) hears of alerts it never saw raised
            assert h.kinds() == [("suspended", "D-1", "hot")]
            cleared = {a.alert_id: a.clear_reason for a in await h.storage.alerts(state="cleared")}
            assert cleared == {1: "rule temperature > 30 no longer exists (found at start)",
                               2: "rule temperature > 30 no longer exists (found at start)",
                               3: "rule temperature > 30 no longer exists (found at start)",
                               4: "a newer alert of the same rule and device is open (found at start)"}

    asyncio.run(restart())


def test_learned_state_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    odd = {"id": "odd", "type": "anomaly", "metric": "temperature"}

    async def learn() -> None:
        async with Harness(db, [odd, SILENT]) as h:
            h.series("S-1", "temperature", [24.0 + 0.3 * (-1) ** i for i in range(200)], T0, MIN)

    asyncio.run(learn())  # close() saved the baselines

    async def judge() -> None:
        async with Harness(db, [odd, SILENT]) as h:
            base = h.engine.book.rules["odd"].tracks["S-1"].base  # type: ignore[union-attr]
            assert base.n == 200 and abs(base.mean - 24.0) < 0.1
            h.feed("S-1", {"temperature": 31.0}, T0 + 200 * MIN)  # flagged at once: nothing to re-learn
            h.engine.tick(T0 + 202 * MIN)  # the learned interval came back too
            await h.settle()
            assert sorted(h.kinds()) == [("raised", "S-1", "odd")]
            assert h.engine.book.rules["silent"].tracks["S-1"].interval == MIN  # type: ignore[union-attr]

    asyncio.run(judge())


class FlakyStorage(SQLiteStorage):
    """Fails ``save_alerts`` while ``down`` is set."""

    down = False
    calls = 0

    async def save_alerts(self, changes: list[tuple[AlertRow, AlertHistoryRow]]) -> list[int]:
        self.calls += 1
        if self.down:
            raise StorageError("database is locked (test)")
        return await super().save_alerts(changes)


def test_events_wait_for_storage_and_nothing_is_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FlakyStorage(tmp_path / "a.db")

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT], storage=storage, op_timeout_s=0.2) as h:
            h.engine.writer.sleep = lambda s: asyncio.sleep(0.01)  # type: ignore[method-assign]
            storage.down = True
            h.feed("S-1", {"temperature": 31.0}, T0)
            h.feed("S-1", {"temperature": 20.0}, T0 + 1000)
            while storage.calls < 3:
                await asyncio.sleep(0.01)
            assert h.events == [] and h.engine.writer.failures >= 3
            storage.down = False
            await h.settle()
            assert h.kinds() == [("raised", "S-1", "hot"), ("cleared", "S-1", "hot")]
            assert all(e.alert["id"] for e in h.events)
            # an operator's change that storage does not take in time: a clear error, stored later
            h.feed("S-1", {"temperature": 31.0}, T0 + 2000)
            await h.settle()
            storage.down = True
            with pytest.raises(AlertError) as err:
                await h.engine.ack(h.open()[0]["id"], "admin")
            assert err.value.code == "storage_unavailable"
            storage.down = False
            await h.settle()
            assert h.events[-1].kind == "acknowledged"

    asyncio.run(body())


def test_a_failing_listener_disturbs_nobody(tmp_path: Path) -> None:
    seen: list[AlertEvent] = []

    def broken(event: AlertEvent) -> Any:
        raise RuntimeError("bug in a consumer")

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT]) as h:
            h.engine.listen(broken)
            stop = h.engine.listen(seen.append)
            h.feed("S-1", {"temperature": 31.0}, T0)
            await h.settle()
            stop()
            h.feed("S-1", {"temperature": 20.0}, T0 + 1000)
            await h.settle()
            assert [e.kind for e in h.events] == ["raised", "cleared"]
            assert [e.kind for e in seen] == ["raised"]
            assert h.engine.counts["listener_errors"] == 2

    asyncio.run(body())



def test_the_engine_on_postgresql(postgres_dsn: str, tmp_path: Path) -> None:
    """The same life cycle on the other backend: raise, acknowledge, restart (suspended), resume, clear."""
    from gateway.storage.postgresql import PostgresStorage

    def make() -> PostgresStorage:
        return PostgresStorage(postgres_dsn, clock=lambda: T0 / 1000)

    async def first() -> int:
        async with Harness(tmp_path / "unused.db", [HOT], storage=make()) as h:
            h.feed("S-1", {"temperature": 35.0}, T0)
            await h.settle()
            (alert,) = h.open()
            await h.engine.ack(alert["id"], "admin")
            return int(alert["id"])

    alert_id = asyncio.run(first())

    async def second() -> None:
        async with Harness(tmp_path / "unused.db", [HOT], storage=make()) as h:
            await h.settle()
            assert [(a["id"], a["state"]) for a in h.open()] == [(alert_id, "suspended")]
            h.feed("S-1", {"temperature": 34.0}, T0 + MIN)
            h.feed("S-1", {"temperature": 20.0}, T0 + 2 * MIN)
            await h.settle()
            detail = await h.engine.alert(alert_id)
            assert [e["event"] for e in detail["history"]] == ["raised", "acknowledged", "suspended", "resumed",
                                                                "cleared"]

    asyncio.run(second())


def test_shutdown_stores_what_is_queued_after_the_writer_stopped(tmp_path: Path) -> None:
    """The gateway stops its background tasks before the alert engine closes: close() writes itself."""
    db = tmp_path / "a.db"

    async def body() -> None:
        async with Harness(db, [HOT]) as h:
            assert h._writer is not None
            h._writer.cancel()
            await asyncio.gather(h._writer, return_exceptions=True)
            h.feed("S-1", {"temperature": 35.0}, T0)
            h.feed("S-1", {"temperature": 20.0}, T0 + 1000)
            h.feed("S-2", {"temperature": 35.0}, T0 + 2000)
            await h.engine.close()
            assert h.kinds() == [("raised", "S-1", "hot"), ("cleared", "S-1", "hot"), ("raised", "S-2", "hot")]

    asyncio.run(body())

    async def after() -> None:
        async with Harness(db, [HOT]) as h:
            assert [a["device"] for a in h.open()] == ["S-2"]

    asyncio.run(after())


class GatedStorage(SQLiteStorage):
    """Its writes commit, then answer only once ``gate`` is set: the window in which a cancelled
    caller does not know that its transaction committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.calls = 0

    async def _write(self, fn: Any) -> Any:
        result = await super()._write(fn)
        self.calls += 1
        await self.gate.wait()
        return result


def test_a_write_in_flight_when_the_writer_is_cancelled_is_not_written_twice(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path / "a.db")

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT], storage=storage) as h:
            h.feed("S-1", {"temperature": 35.0}, T0)
            while storage.calls == 0:
                await asyncio.sleep(0.01)
            assert h._writer is not None
            h._writer.cancel()  # the gateway's shutdown stops its tasks first
            await asyncio.gather(h._writer, return_exceptions=True)
            storage.gate.set()
            await h.engine.close()
            rows = await storage.alerts()
            assert len(rows) == 1 and [e.event for e in await storage.alert_history(rows[0].alert_id)] == ["raised"]
            assert h.kinds() == [("raised", "S-1", "hot")]

    asyncio.run(body())


def test_raise_and_clear_are_logged_with_device_rule_and_value(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="edgewire")

    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT]) as h:
            h.feed("S-1", {"temperature": 31.5}, T0)
            await h.settle()
            (alert,) = h.open()
            h.feed("S-1", {"temperature": 28.25}, T0 + 9000)
            await h.settle()
            logged = [(r.getMessage(), r.levelname, getattr(r, "fields", {})) for r in caplog.records
                      if r.getMessage() in ("alert_raised", "alert_cleared")]
            assert logged == [
                ("alert_raised", "WARNING", {"alert": alert["id"], "device": "S-1", "rule": "hot",
                                             "metric": "temperature", "severity": alert["severity"], "value": 31.5}),
                ("alert_cleared", "INFO", {"alert": alert["id"], "device": "S-1", "rule": "hot",
                                           "metric": "temperature", "value": 28.25, "by": "auto",
                                           "reason": logged[1][2].get("reason")}),
            ]
            assert logged[1][2]["reason"]

    asyncio.run(body())
