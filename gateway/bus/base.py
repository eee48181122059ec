"""What a bus transport provides (Redis, NATS, in-process) and the values that cross it.

A transport is I/O only: it connects, subscribes, publishes and stores bytes. The policy
(health, probes, reconnecting, rebuilding presence, fail-fast, JSON envelopes) lives once,
in ``gateway.bus.engine.Bus``, on top of any transport.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# Called by a transport for each message on a subscribed channel (channel, raw payload).
Deliver = Callable[[str, bytes], Awaitable[None]]
# Called by a transport for each request addressed to this instance: (kind, raw body) -> raw reply.
Answer = Callable[[str, bytes], Awaitable[bytes]]
# Called by a transport when its link broke outside a call (reader died, server closed the socket).
Broken = Callable[[BaseException], None]


@dataclass(frozen=True, slots=True)
class Holder:
    """A presence entry: ``instance`` (started as ``boot``) holds the device since claim ``version``."""

    instance: str
    boot: str
    version: int

    def encode(self) -> str:
        return f"{self.instance} {self.boot} {self.version}"

    @classmethod
    def decode(cls, text: str | bytes | None) -> Holder | None:
        if text is None:
            return None
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        parts = text.split(" ")
        if len(parts) != 3 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]))

    def same_session(self, other: Holder | None) -> bool:
        """Whether ``other`` is this very claim (instance, boot and version)."""
        return other is not None and (self.instance, self.boot, self.version) == (
            other.instance, other.boot, other.version)


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a presence claim.

    ``confirmed`` is False when the bus was down: the claim is recorded here only and written
    to the bus when it comes back (a device claimed elsewhere meanwhile is reported lost then).
    ``previous`` is the entry this claim replaced; ``previous_alive`` says whether its
    instance still holds a lease with that boot (then a takeover request is due).
    """

    holder: Holder
    previous: Holder | None
    previous_alive: bool
    confirmed: bool = True


class Transport(ABC):
    """The I/O of one bus. Every method may raise one of ``errors`` (or ``BusError``)."""

    kind = ""
    commands_durable = False
    commands_why = ""
    errors: tuple[type[BaseException], ...] = ()
    deliver: Deliver
    answer: Answer
    broken: Broken

    def bind(self, deliver: Deliver, answer: Answer, broken: Broken) -> None:
        """Called once by the engine before ``connect``."""
        self.deliver = deliver
        self.answer = answer
        self.broken = broken

    # ------------------------------------------------------------ link
    @abstractmethod
    async def connect(self, instance: str, channels: set[str]) -> None:
        """Open the link, subscribe to ``channels`` and to this instance's requests; raise on failure."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Close the link (never raises)."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Subscribe to one more channel on the open link."""

    @abstractmethod
    async def publish(self, channel: str, data: bytes) -> None:
        """Send ``data`` to every subscriber of ``channel`` (at most once)."""

    @abstractmethod
    async def request(self, instance: str, kind: str, data: bytes, timeout_s: float) -> bytes:
        """Ask ``instance`` and return its raw reply; NoResponder / BusTimeout."""

    @abstractmethod
    async def probe(self, timeout_s: float) -> None:
        """Send a message through the broker to this instance's own subscription and wait for it."""

    def info(self) -> dict[str, object]:
        """Extra facts for the health report (e.g. the server's persistence)."""
        return {}

    # ------------------------------------------------------------ leases (instance liveness)
    @abstractmethod
    async def lease_put(self, instance: str, boot: str, ttl_s: float, force: bool) -> str | None:
        """Write this instance's lease for ``ttl_s``. Unless ``force``, refuse (and return the other
        boot) when the lease is held by another boot of the same instance id; else return None."""

    @abstractmethod
    async def lease_delete(self, instance: str, boot: str) -> None:
        """Remove this instance's lease if it is still ours."""

    @abstractmethod
    async def leases(self) -> dict[str, str]:
        """The live leases: instance -> boot."""

    # ------------------------------------------------------------ presence (device -> holder)
    @abstractmethod
    async def presence_claim(self, device_id: str, instance: str, boot: str) -> tuple[Holder, Holder | None]:
        """Atomically make (instance, boot) the holder with a new, higher version; return (new, previous)."""

    @abstractmethod
    async def presence_release(self, device_id: str, holder: Holder) -> bool:
        """Delete the entry if it is still ``holder`` (compare-and-delete); True if deleted."""

    @abstractmethod
    async def presence_get(self, device_id: str) -> Holder | None:
        """The entry for ``device_id``, live or stale."""

    @abstractmethod
    async def presence_all(self) -> dict[str, Holder]:
        """Every entry, live or stale."""

    @abstractmethod
    async def presence_restore(self, entries: dict[str, Holder]) -> dict[str, Holder]:
        """After a reconnect: for each device, write a new entry of ours (instance and boot of the
        given holder, a new version) unless the entry there belongs to another instance whose lease
        lives with that boot. Return each device's entry after the attempt (ours, or the other one:
        the device was lost)."""

    # ------------------------------------------------------------ durable commands
    @abstractmethod
    async def command_put(self, device_id: str, command_id: str, data: bytes, max_pending: int,
                          expires_ms: int) -> None:
        """Queue a command for ``device_id`` durably (as far as the server is); TooManyCommands if full."""

    @abstractmethod
    async def command_list(self, device_id: str) -> list[tuple[str, bytes]]:
        """The device's queued commands, oldest first: (command id, data)."""

    @abstractmethod
    async def command_delete(self, device_id: str, command_id: str) -> bool:
        """Remove one queued command (the acknowledgement of its id); True if it was there."""
