"""The rollout engine (gateway/ota/rollout.py) on a real SQLite store, with a fake clock and fake offers:
canary first, the failure limit, one alert, offline members, lost offers, a restart resuming; and the
admin requests' refusals (gateway/ota/admin.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import DeviceOffline, OtaError
from gateway.ota.admin import OtaAdmin
from gateway.ota.manifest import public_key_hex
from gateway.ota.release import build_release
from gateway.ota.rollout import RolloutEngine
from gateway.storage.base import DeviceRecord
from gateway.storage.ota_backends import ota_store
from gateway.storage.ota_base import DeviceReport, OtaStore, Rollout
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.storage import with_sqlite

KEY = ec.generate_private_key(ec.SECP256R1())


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Fleet:
    """Fake devices: who is online, how each answers an offer."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.online: set[str] = set(answers)
        self.offered: list[str] = []
        self.alerts: list[tuple[str, str]] = []

    async def offer(self, device: str, args: dict[str, Any]) -> dict[str, Any]:
        assert set(args) == {"manifest", "sig"}
        self.offered.append(device)
        if device not in self.online:
            raise DeviceOffline(f"{device} offline")
        return self.answers[device]

    def alert(self, rollout: Rollout, reason: str) -> None:
        self.alerts.append((rollout.rollout_id, reason))


OK = {"ok": True, "msg": "downloading"}


def engine(store: OtaStore, fleet: Fleet, clock: Clock) -> RolloutEngine:
    return RolloutEngine(store, fleet.offer, fleet.online.__contains__, fleet.alert, lambda: public_key_hex(KEY),
                         clock=clock, tick_s=1.0, offer_timeout_s=5.0, retry_s=10.0)


async def setup(s: SQLiteStorage, tmp: Path, devices: list[str], **options: Any) -> tuple[OtaStore, str]:
    store = ota_store(s)
    (tmp / "app.mpy").write_bytes(b"x" * 3000)
    release, files = build_release("esp32", "1.0.0", [str(tmp / "app.mpy")], KEY, 1000)
    await store.put_release(release, files)

    async def registry() -> list[DeviceRecord]:
        return [DeviceRecord(d, True, None) for d in devices]

    admin = OtaAdmin(store, registry)
    reply = await admin.create({"release": release.release_id, "devices": devices, **options})
    return store, str(reply["rollout"]["rollout"])


async def settle(e: RolloutEngine) -> None:
    """One tick, and the offers it started."""
    await e.tick()
    while e.inflight:
        await asyncio.gather(*e.inflight.values())


async def states(store: OtaStore, rid: str) -> dict[str, str]:
    return {m.device_id: m.state for m in await store.members(rid)}


def test_canary_first_then_the_rest_then_done(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        devices = [f"d{i}" for i in range(10)]
        store, rid = await setup(s, tmp_path, devices, canary="20%", max_failures=1)
        fleet, clock = Fleet(dict.fromkeys(devices, OK)), Clock()
        e = engine(store, fleet, clock)
        await settle(e)
        assert fleet.offered == ["d0", "d1"]  # the canary share (20 % of 10), sorted ids
        assert set((await states(store, rid)).values()) == {"downloading", "pending"}
        await settle(e)
        assert fleet.offered == ["d0", "d1"]  # the rest waits for every canary device to be good
        await store.set_member(rid, "d0", "good", "", 1, ("downloading",))
        await settle(e)
        assert fleet.offered == ["d0", "d1"]
        await store.set_member(rid, "d1", "good", "", 1, ("downloading",))
        await settle(e)
        assert sorted(fleet.offered) == sorted(devices)
        for d in devices[2:]:
            await store.set_member(rid, d, "good", "", 1, ("downloading",))
        await settle(e)
        rollout = await store.rollout(rid)
        assert rollout is not None and rollout.state == "done" and rollout.reason == "10 good, 0 failed"
        assert fleet.alerts == []

    with_sqlite(tmp_path / "e.db", body)


def test_failure_limit_stops_once_with_one_alert(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        devices = [f"d{i}" for i in range(10)]
        refuse = {"ok": False, "msg": "runtime too old", "data": {"code": "runtime_too_old"}}
        answers = {d: (refuse if d in ("d3", "d4", "d5") else OK) for d in devices}
        store, rid = await setup(s, tmp_path, devices, max_failures="20%")  # 2 of 10
        fleet, clock = Fleet(answers), Clock()
        e = engine(store, fleet, clock)
        await settle(e)
        assert (await states(store, rid))["d3"] == "failed"
        await settle(e)
        rollout = await store.rollout(rid)
        assert rollout is not None and rollout.state == "stopped"
        assert "3 of 10 devices failed" in rollout.reason
        await settle(e)
        second = engine(store, fleet, clock)  # another gateway on the same database: no second alert
        await settle(second)
        assert len(fleet.alerts) == 1 and fleet.alerts[0][0] == rid

    with_sqlite(tmp_path / "e.db", body)


def test_offline_members_are_offered_when_they_connect(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        store, rid = await setup(s, tmp_path, ["a", "b"])
        fleet, clock = Fleet({"a": OK, "b": OK}), Clock()
        fleet.online = {"a"}
        e = engine(store, fleet, clock)
        await settle(e)
        assert fleet.offered == ["a"] and (await states(store, rid))["b"] == "pending"
        fleet.online.add("b")
        await settle(e)
        assert fleet.offered == ["a", "b"]

    with_sqlite(tmp_path / "e.db", body)


def test_failed_offer_waits_then_retries_and_busy_is_not_a_failure(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        store, rid = await setup(s, tmp_path, ["a", "b"])
        busy = {"ok": False, "data": {"code": "busy"}}
        fleet, clock = Fleet({"a": OK, "b": busy}), Clock()
        e = engine(store, fleet, clock)
        fleet.online = {"b"}
        e.online = lambda device: True  # presence says online; the offer finds it gone
        await settle(e)
        assert await states(store, rid) == {"a": "pending", "b": "pending"}
        assert sorted(fleet.offered) == ["a", "b"]
        await settle(e)
        assert len(fleet.offered) == 2  # both wait retry_s
        fleet.online.add("a")
        clock.now += 11
        await settle(e)
        assert sorted(fleet.offered) == ["a", "a", "b", "b"]
        assert (await states(store, rid))["a"] == "downloading"

    with_sqlite(tmp_path / "e.db", body)


def test_restart_resumes_from_storage_and_retries_lost_offers(tmp_path: Path) -> None:
    async def first(s: SQLiteStorage) -> str:
        store, rid = await setup(s, tmp_path, ["a", "b", "c"])
        # The engine of the stopped gateway had marked "a" offered and died before its answer came.
        await store.set_member(rid, "a", "offered", "", int(Clock()() * 1000), ("pending",))
        await store.set_member(rid, "b", "good", "", 1, ("pending",))
        return rid

    rid = with_sqlite(tmp_path / "e.db", first)

    async def second(s: SQLiteStorage) -> None:
        store = ota_store(s)
        fleet, clock = Fleet({"a": OK, "b": OK, "c": OK}), Clock()
        e = engine(store, fleet, clock)
        await settle(e)
        assert fleet.offered == ["c"]  # b is good; a's offer is recent: its answer may still come
        clock.now += 11  # twice the offer timeout: a is offered again
        await settle(e)
        await settle(e)
        assert fleet.offered == ["c", "a"]
        assert await states(store, rid) == {"a": "downloading", "b": "good", "c": "downloading"}

    with_sqlite(tmp_path / "e.db", second)


def test_paused_rollout_offers_nothing(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        store, rid = await setup(s, tmp_path, ["a"])
        await store.set_rollout_state(rid, "paused", "", 1, ("running",))
        fleet = Fleet({"a": OK})
        await settle(engine(store, fleet, Clock()))
        assert fleet.offered == []

    with_sqlite(tmp_path / "e.db", body)


def test_an_unanswered_offer_stays_offered_until_the_device_reports_or_it_is_old(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        store, rid = await setup(s, tmp_path, ["a", "b"])
        fleet, clock = Fleet({"a": OK, "b": OK}), Clock()

        async def silent(device: str, args: dict[str, Any]) -> dict[str, Any]:
            fleet.offered.append(device)
            raise TimeoutError("no result")

        e = engine(store, fleet, clock)
        e.offer = silent
        await settle(e)
        assert await states(store, rid) == {"a": "offered", "b": "offered"}  # it may be downloading
        assert await store.offered("a", "esp32-1.0.0")  # so its chunks are served
        await store.record_report(DeviceReport("a", "esp32-1.0.0", "downloading", "", 0, 3000, int(clock() * 1000)))
        clock.now += 11  # twice the offer timeout: b (silent) is offered again, a (downloading) is not
        await settle(e)
        await settle(e)
        assert fleet.offered == ["a", "b", "b"]
        assert (await states(store, rid))["a"] == "downloading"

    with_sqlite(tmp_path / "e.db", body)


def test_admin_refusals_have_stable_codes(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        store, rid = await setup(s, tmp_path, ["a", "b"])

        async def registry() -> list[DeviceRecord]:
            return [DeviceRecord("a", True, None, label="greenhouse"), DeviceRecord("b", True, None)]

        admin = OtaAdmin(store, registry)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"release": "esp32-1.0.0"}, "bad_rollout"),  # neither group nor devices
            ({"release": "esp32-1.0.0", "group": "label=greenhouse", "devices": ["a"]}, "bad_rollout"),
            ({"release": "esp32-1.0.0", "group": "greenhouse"}, "bad_rollout"),
            ({"release": "esp32-1.0.0", "group": "label=shed"}, "no_members"),
            ({"release": "esp32-1.0.0", "devices": ["a", "zz"]}, "no_members"),
            ({"release": "esp32-1.0.0", "devices": ["a"], "canary": "101%"}, "bad_rollout"),
            ({"release": "esp32-1.0.0", "devices": ["a"], "max_failures": -1}, "bad_rollout"),
            ({"release": "esp32-2.0.0", "devices": ["a"]}, "no_such_release"),
            ({"release": "nope", "devices": ["a"]}, "bad_release"),
        ]
        for msg, code in cases:
            with pytest.raises(OtaError) as err:
                await admin.create(msg)
            assert err.value.code == code, msg
        group = await admin.create({"release": "esp32-1.0.0", "group": "label=greenhouse", "max_failures": "50%"})
        assert group["rollout"]["members"] == 1 and group["rollout"]["max_failures"] == 0
        with pytest.raises(OtaError) as err:
            await admin.resume({"rollout": rid})
        assert err.value.code == "bad_state"
        with pytest.raises(OtaError) as err:
            await admin.pause({"rollout": "ro-none"})
        assert err.value.code == "no_such_rollout"
        with pytest.raises(OtaError) as err:
            await admin.delete({"release": "esp32-1.0.0"})
        assert err.value.code == "release_in_use"
        assert (await admin.abort({"rollout": rid}))["rollout"]["state"] == "aborted"
        with pytest.raises(OtaError) as err:
            await admin.abort({"rollout": rid})
        assert err.value.code == "bad_state"
        unavailable = OtaAdmin(None, registry, unavailable="storage = none", pubkey=lambda: "04" + "ab" * 64)
        # the release key for make flash needs no storage; none yet: null and how to make one
        assert await unavailable.requests["ota_pubkey"]({}) == {"pubkey": "04" + "ab" * 64}
        nokey = await OtaAdmin(store, registry).requests["ota_pubkey"]({})
        assert nokey["pubkey"] is None and "python -m gateway ota pubkey" in nokey["msg"], nokey
        for name, handler in unavailable.requests.items():
            if name == "ota_pubkey":
                continue
            with pytest.raises(OtaError) as err:
                await handler({"release": "esp32-1.0.0", "rollout": rid, "devices": ["a"]})
            assert err.value.code == "ota_unavailable", name

    with_sqlite(tmp_path / "e.db", body)
