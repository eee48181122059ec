"""The cluster room: the bus wired into the gateway (docs/scaling.md sections 4 and 10).

It implements the sessions' hooks (presence claim and takeover before a welcome, queued
commands after it, release at the end), answers the peers' ``takeover`` requests, follows the
fleet (presence notices, leases), carries the dashboard deltas and registry notices between
instances, and reports the bus in /healthz and /metrics.

Without a bus (``bus = ""``) the same code runs over the in-process bus: claims, releases and
the command queue stay in this process, and nothing is published (there is nobody to tell).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.bus import Bus, Holder
from gateway.cluster.fleet import FleetMap
from gateway.dashboard.view import Hub
from gateway.device_commands import Commands
from gateway.device_conn import DeviceConnection, SessionHooks
from gateway.errors import BusError, BusUnavailable, GatewayError, NoResponder, RemoteError
from gateway.logs import log
from gateway.replacement import LiveDevices
from gateway.supervisor import spawn
from protocol import wire

TAKEOVER = "takeover"  # request to the old holder: {device, version} -> {released, held}
PRESENCE = "presence"  # channel: {device, instance, boot, version, online}
DASH = "dash"  # channel: one instance's dashboard changes of one interval {devices, events}
REGISTRY = "registry"  # channel: {device, change}
SUPERSEDED = "superseded"  # a takeover from a claim older than the one held here
RESYNC_WAIT_S = 30.0  # how long the rebuild after a reconnect waits for the bus to be ok
ANNOUNCE_CHUNK = 500  # devices per "held" notice after a reconnect
CLOSE_WAIT_S = 10.0  # the longest a stopping instance waits for the bus to close


class Superseded(GatewayError):
    code = SUPERSEDED


class Cluster(SessionHooks):
    def __init__(self, bus: Bus, sessions: LiveDevices, recheck: Callable[[str], Coroutine[Any, Any, None]],
                 commands: Commands, hub: Hub, *, clustered: bool, takeover_timeout_s: float = 5.0,
                 siblings: tuple[str, ...] = ()) -> None:
        """``sessions``: the live sessions here (gateway/replacement.py); ``recheck(device_id)``: check a
        session against the registry now (gateway/device_sweep.py).
        ``clustered``: a real bus with peers (publish presence, dashboard deltas, registry notices);
        ``siblings``: the other workers of this host (gateway/workers.py), peers from the start, before
        their leases are seen."""
        self.siblings = siblings
        self.bus = bus
        self.sessions = sessions
        self.recheck = recheck
        self.commands = commands
        self.hub = hub
        self.clustered = clustered
        self.takeover_timeout_s = takeover_timeout_s
        self.fleet = FleetMap(bus.instance_id, hub)
        self.peers: dict[str, str] = {}  # other live instances: id -> boot
        self.takeovers: dict[str, int] = {}  # takeovers asked of peers, by result
        self.unsent: dict[str, int] = {}  # notices and deltas not published (bus not ok), by channel
        self._holders: dict[DeviceConnection, Holder] = {}  # each live session's presence claim

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Register every handler, then start the bus (it connects in the background)."""
        bus = self.bus
        bus.serve(TAKEOVER, self._serve_takeover)
        bus.presence.on_lost(self._lost)
        bus.on_reconnect(self._reconnected)
        if self.clustered:
            await bus.subscribe(PRESENCE, self._on_presence)
            await bus.subscribe(DASH, self._on_dash)
            await bus.subscribe(REGISTRY, self._on_registry)
            self.hub.share(self._publish_update)
        await bus.start()
        if not self.clustered:
            await bus.wait_ok(bus.op_timeout_s)  # in-process: ok at once

    async def close(self) -> None:
        """After the drain: release what is left and the lease (peers see this instance gone at once).
        Bounded: a bus that does not answer must not hold the shutdown (peers see the lease expire)."""
        try:
            await asyncio.wait_for(self.bus.close(), CLOSE_WAIT_S)
        except TimeoutError:
            log("bus_close_slow", logging.WARNING, hint=f"the bus did not close within {CLOSE_WAIT_S:g} s; "
                "peers see this instance gone when its lease expires")

    async def watch(self) -> None:
        """Follow the peers' leases: a peer whose lease expired (it crashed) holds no device any more.
        A supervised task, in cluster mode only."""
        bus = self.bus
        while True:
            await asyncio.sleep(bus.heartbeat_s)
            if not bus.ok:
                continue
            try:
                leases = await bus.presence.instances()
            except BusError:
                continue
            self.peers = {name: boot for name, boot in leases.items() if name != bus.instance_id}
            gone = self.fleet.prune(leases)
            if gone:
                log("peer_devices_offline", logging.WARNING, devices=gone, hint="their instance's lease expired")

    # ------------------------------------------------------------ questions other rooms ask
    def online(self, device_id: str) -> bool:
        """Whether the device has a session on some live instance."""
        return device_id in self.sessions.devices or self.fleet.held_elsewhere(device_id)

    @property
    def fleet_online(self) -> int:
        return len(self.sessions.devices) + len(self.fleet)

    def registry_changed(self, device_id: str, change: str) -> None:
        """The registry entry changed here (admin API): re-check the session here, tell the peers."""
        spawn(self.recheck(device_id), "registry recheck")
        if self.clustered:
            spawn(self._publish(REGISTRY, {"device": device_id, "change": change}), "registry notice")

    # ------------------------------------------------------------ session hooks
    async def claim(self, conn: DeviceConnection) -> tuple[str, str] | None:
        bus = self.bus
        device_id = conn.device_id
        claim = await bus.presence.claim(device_id)
        self._holders[conn] = claim.holder
        if self.clustered:
            self.fleet.mine(device_id, claim.holder)
            self._notify(device_id, claim.holder, True)
        previous = claim.previous
        if previous is None or not claim.previous_alive or previous.instance == bus.instance_id:
            return None  # nobody else holds it (a session here is replaced by the sessions room)
        try:
            reply = await bus.request(previous.instance, TAKEOVER, {"device": device_id,
                                      "version": claim.holder.version}, self.takeover_timeout_s)
            self._took_over("released")
            if reply.get("held"):  # two live connections of one device: shown as in one process
                self.hub.replaced(device_id, str(reply.get("address", "")), conn.ws.address)
            return None
        except NoResponder:
            # Its process is gone (or cut off: it closes its stale session when it is back). What it
            # had not acknowledged, the device resends; duplicates are dropped by (device, seq).
            log("takeover_no_responder", logging.WARNING, device=device_id, holder=previous.instance)
            self._took_over("no_responder")
            return None
        except BusUnavailable:
            self._took_over("bus_down")  # our own link is down: welcome now (readings first)
            return None
        except RemoteError as err:
            if err.code == SUPERSEDED:
                self._took_over(SUPERSEDED)
                return (wire.E_REPLACED, "a newer connection authenticated as this device")
            self._took_over("refused")
        except BusError:
            self._took_over("timeout")
        log("takeover_failed", logging.WARNING, device=device_id, holder=previous.instance)
        return (wire.E_TAKEOVER, f"gateway instance {previous.instance} still holds this device; reconnect later")

    def _took_over(self, result: str) -> None:
        self.takeovers[result] = self.takeovers.get(result, 0) + 1

    def welcomed(self, conn: DeviceConnection) -> None:
        spawn(self.commands.welcomed(conn), "queued commands")

    async def ended(self, conn: DeviceConnection, current: bool) -> None:
        holder = self._holders.pop(conn, None)
        self.commands.ended(conn, moved=conn.moved or not current)
        if current and holder is not None:
            holder = self.bus.presence.local.get(conn.device_id, holder)  # rewritten after a reconnect?
            await self.bus.presence.release(conn.device_id)  # compare-and-delete: a newer claim stays
            self._notify(conn.device_id, holder, False)

    def _notify(self, device_id: str, holder: Holder, online: bool) -> None:
        if self.clustered and holder.version:
            spawn(self._publish(PRESENCE, {"device": device_id, "instance": holder.instance, "boot": holder.boot,
                                           "version": holder.version, "online": online}), "presence notice")

    # ------------------------------------------------------------ requests and messages from peers
    async def _serve_takeover(self, message: dict[str, Any], sender: str) -> dict[str, Any]:
        device_id, version = message.get("device"), message.get("version")
        if not isinstance(device_id, str) or type(version) is not int:
            raise RemoteError("bad_request", "takeover needs a device and a version")
        mine = self.bus.presence.local.get(device_id)
        if mine is not None and mine.version > version:
            raise Superseded(f"this instance holds a newer claim of {device_id!r}")
        conn = self.sessions.devices.get(device_id)
        address = conn.ws.address if conn is not None else ""
        held = await self.sessions.hand_over(device_id, f"taken over by {sender}")
        return {"released": True, "held": held, "address": address}

    async def _lost(self, device_id: str, holder: Holder) -> None:
        """A device of ours was claimed by another instance while we were cut off from the bus."""
        spawn(self.sessions.hand_over(device_id, f"claimed by {holder.instance} while this instance was cut off"),
              "lost device")

    async def _reconnected(self) -> None:
        spawn(self._resync(), "bus resync")

    async def _resync(self) -> None:
        """Once the bus is ok again: the fleet from presence, fresh dashboards, the queued commands."""
        bus = self.bus
        try:
            await bus.wait_ok(RESYNC_WAIT_S)
            if self.clustered:
                self.fleet.rebuild(await bus.presence.snapshot())
                self.peers = {name: boot for name, boot in (await bus.presence.instances()).items()
                              if name != bus.instance_id}
                await self._announce()
                self.hub.resync_all()
            await self.commands.resync(c for c in list(self.sessions.devices.values()) if c.welcomed)
        except BusError as err:
            log("bus_resync_failed", logging.WARNING, error=str(err)[:200], hint="retried at the next reconnect")

    async def _announce(self) -> None:
        """After a reconnect, tell the peers every device held here (their snapshot may have been
        taken before this instance wrote its entries again): one "held" notice per chunk."""
        bus = self.bus
        held = [[device_id, h.version] for device_id, h in list(bus.presence.local.items()) if h.version]
        for start in range(0, len(held), ANNOUNCE_CHUNK):
            await bus.publish(PRESENCE, {"instance": bus.instance_id, "boot": bus.boot,
                                         "held": held[start:start + ANNOUNCE_CHUNK]})

    async def _on_presence(self, message: dict[str, Any], sender: str) -> None:
        instance, boot = message.get("instance"), message.get("boot")
        if not isinstance(instance, str) or not isinstance(boot, str):
            raise ValueError("malformed presence notice")
        held = message.get("held")
        if isinstance(held, list):  # a peer's holdings after its reconnect
            for entry in held:
                if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and type(entry[1]) is int:
                    self.fleet.notice(entry[0], Holder(instance, boot, entry[1]), True)
            return
        device_id, version = message.get("device"), message.get("version")
        if not isinstance(device_id, str) or type(version) is not int:
            raise ValueError("malformed presence notice")
        self.fleet.notice(device_id, Holder(instance, boot, version), message.get("online") is True)

    async def _on_dash(self, message: dict[str, Any], sender: str) -> None:
        devices, events = message.get("devices"), message.get("events")
        if not isinstance(devices, dict) or not isinstance(events, list):
            raise ValueError("malformed dashboard delta")
        self.hub.remote_update(devices, events)

    async def _on_registry(self, message: dict[str, Any], sender: str) -> None:
        device_id = message.get("device")
        if not isinstance(device_id, str):
            raise ValueError("malformed registry notice")
        if device_id in self.sessions.devices:
            spawn(self.recheck(device_id), "registry recheck")

    # ------------------------------------------------------------ publishing
    def _publish_update(self, update: dict[str, Any]) -> None:
        """The hub's changes of one interval, for the peers (skipped while alone or the bus is down)."""
        if self.peers or self.siblings:
            spawn(self._publish(DASH, update), "dashboard delta")

    async def _publish(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self.bus.publish(channel, message)
        except BusError:
            self.unsent[channel] = self.unsent.get(channel, 0) + 1

    # ------------------------------------------------------------ health and metrics
    def health(self) -> dict[str, Any] | None:
        """``checks.bus`` for /healthz (cluster mode only), with the peers and the fleet."""
        if not self.clustered:
            return None
        return {**self.bus.health(), "peers": sorted(self.peers), "fleet_online": self.fleet_online}

    def metric_rows(self) -> tuple[list[tuple[str, str, float]], list[tuple[str, str, float]],
                                   list[tuple[str, str, str, dict[str, float]]]]:
        """(gauges, counters, labelled counters) for gateway.metrics.Metrics.render."""
        bus = self.bus
        gauges: list[tuple[str, str, float]] = [
            ("bus_up", "1 while the bus link is ok (always 1 without a bus).", int(bus.ok)),
            ("fleet_online", "Devices online on any instance (presence; without a bus: this instance's).",
             self.fleet_online),
            ("instances", "Live gateway instances on the bus, this one included.", len(self.peers) + 1),
        ]
        counters: list[tuple[str, str, float]] = [
            ("bus_reconnects", "Bus links re-established after a loss.", bus.reconnects)]
        labelled: list[tuple[str, str, str, dict[str, float]]] = [
            ("bus_dropped", "Bus messages dropped (malformed, failed handler), by reason.", "reason",
             dict(bus.dropped)),
            ("bus_unsent", "Notices and dashboard deltas not published because the bus was down, by channel.",
             "channel", dict(self.unsent)),
            ("takeovers", "Devices taken over from another instance at connect, by result.", "result",
             dict(self.takeovers)),
            ("commands", "Commands run from this instance, by outcome.", "outcome", dict(self.commands.outcomes)),
        ]
        return gauges, counters, labelled
