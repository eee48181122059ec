"""Which devices are online at which peer instance, as this instance knows it (docs/scaling.md
section 4, "Dashboard fan-out"): from the peers' presence notices, a presence snapshot after
every (re)connect, and the instances' leases (a peer whose lease expired holds nothing).

Every change is passed to the hub (``remote_presence``), so a dashboard on any instance shows the
whole fleet. Notices arrive at most once and in any order: each carries its claim's version,
and an older one never overrides a newer one (a device that moved A -> B is not shown offline
by A's late "released" notice), nor does a claim's "online" that arrives after its own release.
"""

from __future__ import annotations

from gateway.bus import Holder
from gateway.dashboard.view import Hub


class FleetMap:
    def __init__(self, instance_id: str, hub: Hub) -> None:
        self.instance_id = instance_id
        self.hub = hub
        self.holders: dict[str, Holder] = {}  # devices online at a peer
        self.versions: dict[str, int] = {}  # the newest claim version seen per device (online or not)
        self.released: dict[str, int] = {}  # the newest claim version seen released per device

    def __len__(self) -> int:
        return len(self.holders)

    def held_elsewhere(self, device_id: str) -> bool:
        return device_id in self.holders

    def mine(self, device_id: str, holder: Holder) -> None:
        """This instance claimed the device (its sessions tell the hub when it is welcomed)."""
        if holder.version > self.versions.get(device_id, -1):
            self.versions[device_id] = holder.version
        self.holders.pop(device_id, None)

    def notice(self, device_id: str, holder: Holder, online: bool) -> None:
        """A peer claimed (``online``) or released the device with claim ``holder``."""
        version = holder.version
        if not online:
            if version > self.released.get(device_id, -1):
                self.released[device_id] = version
            current = self.holders.get(device_id)
            if current is not None and current.version <= version:
                del self.holders[device_id]
                self.hub.remote_presence(device_id, current.instance, False)
            return
        if version < self.versions.get(device_id, -1) or version <= self.released.get(device_id, -1):
            return  # older than what we know, or released already
        self.versions[device_id] = version
        if holder.instance == self.instance_id:
            return
        current = self.holders.get(device_id)
        self.holders[device_id] = holder
        if current is None or current.instance != holder.instance:
            self.hub.remote_presence(device_id, holder.instance, True)

    def rebuild(self, snapshot: dict[str, Holder]) -> None:
        """The bus's presence (live entries only) replaces what we knew about the peers' devices."""
        peers = {device: h for device, h in snapshot.items()
                 if h.instance != self.instance_id and h.version > self.released.get(device, -1)}
        for device_id, old in list(self.holders.items()):
            new = peers.get(device_id)
            if new is None or new.instance != old.instance:
                del self.holders[device_id]
                self.hub.remote_presence(device_id, old.instance, False)
        for device_id, holder in peers.items():
            self.versions[device_id] = max(holder.version, self.versions.get(device_id, -1))
            if device_id not in self.holders:
                self.hub.remote_presence(device_id, holder.instance, True)
            self.holders[device_id] = holder

    def prune(self, leases: dict[str, str]) -> int:
        """Forget the devices of instances whose lease is gone (or that restarted); how many."""
        gone = [(device_id, h) for device_id, h in self.holders.items() if leases.get(h.instance) != h.boot]
        for device_id, holder in gone:
            del self.holders[device_id]
            self.hub.remote_presence(device_id, holder.instance, False)
        return len(gone)
