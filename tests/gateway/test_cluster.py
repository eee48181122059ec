"""The cluster room's parts without processes: the fleet map (notices in any order), the hub's
peers' side, and the command path on the in-process bus (the embedded default)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.bus import Holder, MemoryBroker, open_bus
from gateway.bus.engine import Bus
from gateway.bus.memory import MemoryTransport
from gateway.cluster import FleetMap
from gateway.conn import dumps
from gateway.dashboard.view import Hub
from gateway.device_commands import Commands
from gateway.errors import CommandError, DeviceOffline
from protocol.gateway import GatewaySession
from tests.helpers.waiting import until


def hub() -> Hub:
    return Hub(50, 8, dumps, clock=lambda: 1000.0)


def a(version: int) -> Holder:
    return Holder("gw-a", "boot-a", version)


def b(version: int) -> Holder:
    return Holder("gw-b", "boot-b", version)


def test_a_release_that_overtakes_its_claim_leaves_the_device_offline() -> None:
    h = hub()
    fleet = FleetMap("gw-me", h)
    fleet.notice("d", a(5), False)
    fleet.notice("d", a(5), True)
    assert not fleet.held_elsewhere("d") and not h.view("d").online


def test_a_late_release_of_the_previous_holder_does_not_hide_a_moved_device() -> None:
    h = hub()
    fleet = FleetMap("gw-me", h)
    fleet.notice("d", a(1), True)
    fleet.notice("d", b(2), True)  # moved A -> B
    fleet.notice("d", a(1), False)  # A's release arrives last
    assert fleet.held_elsewhere("d") and h.view("d").online and h.view("d").holder == "gw-b"
    fleet.notice("d", a(1), True)  # and A's old claim, repeated, changes nothing
    assert fleet.holders["d"].instance == "gw-b"


def test_rebuild_and_expired_leases() -> None:
    h = hub()
    fleet = FleetMap("gw-me", h)
    fleet.notice("x", a(1), True)
    fleet.notice("y", a(2), True)
    fleet.rebuild({"y": a(2), "z": b(3), "mine": Holder("gw-me", "boot", 4)})
    assert set(fleet.holders) == {"y", "z"} and not h.view("x").online and h.view("z").online
    assert fleet.prune({"gw-b": "boot-b", "gw-me": "boot"}) == 1  # gw-a's lease is gone
    assert set(fleet.holders) == {"z"} and not h.view("y").online
    assert fleet.prune({"gw-b": "other-boot"}) == 1  # gw-b restarted: its old claims are void
    assert len(fleet) == 0


def test_a_device_that_moved_away_is_not_shown_offline_by_its_old_session_ending() -> None:
    h = hub()
    h.online("d")
    h.remote_presence("d", "gw-b", True)  # it went on at gw-b while our session ends
    h.offline("d")
    assert h.view("d").online
    h.remote_presence("d", "gw-a", False)  # a release by an instance that no longer holds it
    assert h.view("d").online
    h.remote_presence("d", "gw-b", False)
    assert not h.view("d").online


def test_peers_changes_are_shown_but_never_published_again() -> None:
    h = hub()
    published: list[dict[str, Any]] = []
    h.on_update = published.append
    h.reading("local", {"temperature": 20.0}, 500)
    h.remote_update({"remote": {"latest": {"temperature": [21.0, 700]}, "status": {"fw": "1"}, "last_seen": 800}},
                    [{"kind": "alert_raised", "device": "remote", "at": 800,
                      "alert": {"id": 7, "device": "remote"}}, {"kind": "online", "device": "remote"}])
    h.remote_update({"remote": {"latest": {"temperature": [19.0, 600]}}}, [])  # older: ignored
    frames: list[str] = []

    class Client:
        def offer(self, frame: str) -> None:
            frames.append(frame)

    h.clients.add(Client())  # type: ignore[arg-type]
    h.flush()
    assert [set(p["devices"]) for p in published] == [{"local"}] and published[0]["events"] == []
    update = json.loads(frames[0])
    assert update["devices"]["remote"]["latest"] == {"temperature": [21.0, 700]}
    assert update["devices"]["remote"]["status"] == {"fw": "1"}
    assert [e["kind"] for e in update["events"]] == ["alert_raised"]  # online comes from presence only
    assert update["alerts"] == [{"id": 7, "device": "remote"}]
    h.remote_update({}, [{"kind": "alert_cleared", "device": "remote", "alert": {"id": 7, "device": "remote"}}])
    assert h.alerts == {}


class Target:
    """A welcomed device session as the commands room sees it."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.session = GatewaySession()
        self.sent: list[dict[str, Any]] = []

    async def send(self, frame: str) -> None:
        self.sent.append(json.loads(frame))


async def embedded() -> tuple[Bus, Commands, dict[str, Target]]:
    bus = open_bus("", "solo")
    live: dict[str, Target] = {}

    async def registered(device_id: str) -> object | None:
        return object() if device_id.startswith("dev") else None

    commands = Commands(bus, live.get, registered)
    await bus.start()
    await bus.wait_ok(5)
    return bus, commands, live


def test_embedded_commands_wait_for_an_offline_device_and_expire_with_a_clear_error() -> None:
    async def run() -> None:
        bus, commands, live = await embedded()
        try:
            call = asyncio.ensure_future(commands.run("dev-1", "ping", {}, 10))

            async def queued() -> bool:
                return bool(await bus.commands.pending("dev-1"))

            await until(queued, 5, "the command queued for the offline device")
            target = live["dev-1"] = Target("dev-1")
            await commands.welcomed(target)  # connects: the queued command goes out
            (cmd,) = target.sent
            commands.result("dev-1", {"id": cmd["id"], "ok": True, "msg": "pong", "data": None})
            assert (await call)["msg"] == "pong"
            assert await bus.commands.pending("dev-1") == []  # the result acknowledged the id
            with pytest.raises(CommandError) as expired:
                await commands.run("dev-2", "ping", {}, 0.2)
            assert expired.value.code == "command_expired"
            with pytest.raises(CommandError) as unknown:
                await commands.run("nobody", "ping", {}, 1)
            assert unknown.value.code == "not_found"
            assert commands.outcomes == {"ok": 1, "command_expired": 1, "not_found": 1}
        finally:
            await bus.close()

    asyncio.run(run())


def test_a_device_that_never_connected_is_refused_at_once_and_one_that_did_is_waited_for() -> None:
    """The admin API's command to a device with no reading stored answers device_offline at once,
    not command_expired after its timeout (issue 20.7); a device seen before still gets it queued."""
    async def run() -> None:
        bus, _, live = await embedded()
        seqs = {"dev-seen": 42}

        async def stored_seq(device_id: str) -> int:
            return seqs.get(device_id, 0)

        async def registered(device_id: str) -> object | None:
            return object()

        commands = Commands(bus, live.get, registered, stored_seq=stored_seq)
        try:
            with pytest.raises(DeviceOffline) as never:
                await asyncio.wait_for(commands.run("dev-new", "ping", {}, 300), 5)
            assert "never connected" in str(never.value)
            assert await bus.commands.pending("dev-new") == []  # nothing queued
            with pytest.raises(CommandError) as expired:
                await commands.run("dev-seen", "ping", {}, 0.2)
            assert expired.value.code == "command_expired"
        finally:
            await bus.close()

    asyncio.run(run())


def test_a_moved_device_keeps_its_command_and_a_leaving_one_fails_it() -> None:
    async def run() -> None:
        bus, commands, live = await embedded()
        try:
            old = live["dev-3"] = Target("dev-3")
            call = asyncio.ensure_future(commands.run("dev-3", "ping", {}, 10))
            await until(lambda: bool(old.sent), 5, "the command sent to the online device")
            commands.ended(old, moved=True)  # handed over: stays queued
            new = live["dev-3"] = Target("dev-3")
            await commands.welcomed(new)
            assert new.sent[0]["id"] == old.sent[0]["id"]
            commands.ended(new, moved=False)  # then it went offline without answering
            with pytest.raises(DeviceOffline) as offline:  # what every caller catches for an offline device
                await call
            assert offline.value.code == "device_offline"
            assert await bus.commands.pending("dev-3") == []
        finally:
            await bus.close()

    asyncio.run(run())


def test_commands_fail_fast_while_the_bus_is_down() -> None:
    async def run() -> None:
        broker = MemoryBroker()
        bus = Bus(MemoryTransport(broker), "gw-x", lease_ttl_s=3.0, backoff_s=(0.05, 0.2))
        commands = Commands(bus, lambda device_id: None)
        await bus.start()
        await bus.wait_ok(5)
        broker.stop()
        try:
            with pytest.raises(Exception) as refused:
                await asyncio.wait_for(commands.run("dev-4", "ping", {}, 10), 1)
            assert getattr(refused.value, "code", None) == "bus_unavailable"
        finally:
            broker.start()
            await bus.close()

    asyncio.run(run())
