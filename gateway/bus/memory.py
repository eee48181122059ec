"""The in-process bus: the embedded default (one gateway, no Redis or NATS) and a stand-in broker
for tests of several instances in one process.

``MemoryBroker`` plays the server: channels, requests, leases that expire by its injected
clock, presence, command queues. ``stop()`` / ``start(lose_data=...)`` play a server outage and
restart: every link breaks, and a restarted broker may come back empty, as a Redis without
persistence does. Each ``MemoryTransport`` is one instance's connection to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.bus.base import Holder, Transport
from gateway.errors import NoResponder, TooManyCommands

PROBE = "\x00probe"


class BrokerDown(ConnectionResetError):
    """The in-process broker is stopped (a test's stand-in for a server outage)."""


@dataclass
class _Link:
    transport: MemoryTransport
    instance: str
    channels: set[str]
    queue: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)


class MemoryBroker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.up = True
        self.links: list[_Link] = []
        self.leases: dict[str, tuple[str, float]] = {}  # instance -> (boot, expires at)
        self.presence: dict[str, Holder] = {}
        self.version = 0
        self.commands: dict[str, list[tuple[str, bytes, int]]] = {}  # device -> [(id, data, expires_ms)]
        self.cut_off: set[str] = set()  # instances whose link is cut (a network split)

    def check(self) -> None:
        if not self.up:
            raise BrokerDown("the in-process broker is stopped")

    def stop(self) -> None:
        """An outage: every link breaks; nothing is kept while it is down."""
        self.up = False
        links, self.links = self.links, []
        for link in links:
            link.transport.lost(BrokerDown("broker stopped"))

    def cut(self, instance: str) -> None:
        """A network split between ``instance`` and the broker: its link breaks and cannot come back."""
        self.cut_off.add(instance)
        for link in [link for link in self.links if link.instance == instance]:
            self.links.remove(link)
            link.transport.lost(BrokerDown(f"{instance} is cut off from the broker"))

    def heal(self, instance: str) -> None:
        self.cut_off.discard(instance)

    def start(self, lose_data: bool = True) -> None:
        """Back up; ``lose_data`` empties it like a restarted Redis without persistence."""
        if lose_data:
            self.leases.clear()
            self.presence.clear()
            self.commands.clear()
        self.up = True

    def live_leases(self) -> dict[str, str]:
        now = self.clock()
        return {instance: boot for instance, (boot, expires) in self.leases.items() if expires > now}

    def next_version(self) -> int:
        self.version += 1
        return self.version


class MemoryTransport(Transport):
    kind = "memory"
    commands_durable = False
    commands_why = ("embedded bus: queued commands live in this process, the only one that could "
                    "deliver them; they end with it")
    errors = (ConnectionError,)

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker or MemoryBroker()
        self._link: _Link | None = None
        self._reader: asyncio.Task[None] | None = None
        self._probes: dict[int, asyncio.Future[None]] = {}
        self._probe_seq = 0

    # ------------------------------------------------------------ link
    def _open(self) -> _Link:
        self.broker.check()
        if self._link is None:
            raise BrokerDown("not connected")
        return self._link

    async def connect(self, instance: str, channels: set[str]) -> None:
        self.broker.check()
        if instance in self.broker.cut_off:
            raise BrokerDown(f"{instance} is cut off from the broker")
        link = _Link(self, instance, set(channels))
        self._link = link
        self.broker.links.append(link)
        self._reader = asyncio.get_running_loop().create_task(self._read(link))

    def lost(self, err: BaseException) -> None:
        if self._link is not None:
            self._link = None
            if self._reader is not None:
                self._reader.cancel()
            self.broken(err)

    async def disconnect(self) -> None:
        link, self._link = self._link, None
        if link is not None and link in self.broker.links:
            self.broker.links.remove(link)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        for future in self._probes.values():
            future.cancel()
        self._probes.clear()

    async def _read(self, link: _Link) -> None:
        while True:
            channel, data = await link.queue.get()
            if channel == PROBE:
                future = self._probes.pop(int(data), None)
                if future is not None and not future.done():
                    future.set_result(None)
                continue
            await self.deliver(channel, data)

    async def subscribe(self, channel: str) -> None:
        self._open().channels.add(channel)

    async def publish(self, channel: str, data: bytes) -> None:
        self._open()
        for link in self.broker.links:
            if channel in link.channels:
                link.queue.put_nowait((channel, data))

    async def request(self, instance: str, kind: str, data: bytes, timeout_s: float) -> bytes:
        self._open()
        for link in self.broker.links:
            if link.instance == instance:
                return await asyncio.wait_for(link.transport.answer(kind, data), timeout_s)
        raise NoResponder(f"no instance {instance!r} is listening on the bus")

    async def probe(self, timeout_s: float) -> None:
        link = self._open()
        self._probe_seq += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[self._probe_seq] = future
        link.queue.put_nowait((PROBE, str(self._probe_seq).encode()))
        await asyncio.wait_for(future, timeout_s)

    # ------------------------------------------------------------ leases
    async def lease_put(self, instance: str, boot: str, ttl_s: float, force: bool) -> str | None:
        self._open()
        current = self.broker.live_leases().get(instance)
        if current is not None and current != boot and not force:
            return current
        self.broker.leases[instance] = (boot, self.broker.clock() + ttl_s)
        return None

    async def lease_delete(self, instance: str, boot: str) -> None:
        self._open()
        if self.broker.leases.get(instance, ("", 0.0))[0] == boot:
            del self.broker.leases[instance]

    async def leases(self) -> dict[str, str]:
        self._open()
        return self.broker.live_leases()

    # ------------------------------------------------------------ presence
    async def presence_claim(self, device_id: str, instance: str, boot: str) -> tuple[Holder, Holder | None]:
        self._open()
        previous = self.broker.presence.get(device_id)
        holder = self.broker.presence[device_id] = Holder(instance, boot, self.broker.next_version())
        return holder, previous

    async def presence_release(self, device_id: str, holder: Holder) -> bool:
        self._open()
        if holder.same_session(self.broker.presence.get(device_id)):
            del self.broker.presence[device_id]
            return True
        return False

    async def presence_get(self, device_id: str) -> Holder | None:
        self._open()
        return self.broker.presence.get(device_id)

    async def presence_all(self) -> dict[str, Holder]:
        self._open()
        return dict(self.broker.presence)

    async def presence_restore(self, entries: dict[str, Holder]) -> dict[str, Holder]:
        self._open()
        leases = self.broker.live_leases()
        result = {}
        for device_id, mine in entries.items():
            current = self.broker.presence.get(device_id)
            if current is None or current.instance == mine.instance or leases.get(current.instance) != current.boot:
                current = self.broker.presence[device_id] = Holder(mine.instance, mine.boot,
                                                                   self.broker.next_version())
            result[device_id] = current
        return result

    # ------------------------------------------------------------ commands
    async def command_put(self, device_id: str, command_id: str, data: bytes, max_pending: int,
                          expires_ms: int) -> None:
        self._open()
        queue = self.broker.commands.setdefault(device_id, [])
        if len(queue) >= max_pending:
            raise TooManyCommands(f"device {device_id!r} already has {len(queue)} pending commands")
        queue.append((command_id, data, expires_ms))

    async def command_list(self, device_id: str) -> list[tuple[str, bytes]]:
        self._open()
        return [(command_id, data) for command_id, data, _ in self.broker.commands.get(device_id, [])]

    async def command_delete(self, device_id: str, command_id: str) -> bool:
        self._open()
        queue = self.broker.commands.get(device_id, [])
        for index, (found, _, _) in enumerate(queue):
            if found == command_id:
                del queue[index]
                if not queue:
                    del self.broker.commands[device_id]
                return True
        return False
