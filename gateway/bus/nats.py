"""The NATS transport (nats-py): core pub/sub and request/reply, JetStream KV and a JetStream stream.

* subjects ``edgewire.ch.<name>`` (fan-out) and ``edgewire.rpc.<instance>.<kind>`` (requests,
  answered with core NATS replies; ``probe`` is answered by the transport itself);
* KV bucket ``edgewire_instances``: the leases, the bucket's TTL is the lease TTL;
* KV bucket ``edgewire_presence``: device -> "instance boot"; the version is the KV revision;
* stream ``EDGEWIRE_COMMANDS`` (file storage): subject ``edgewire.cmd.<device>`` per device;
  a command is removed by sequence when its result arrives. The per-device cap is checked
  before each put (two puts racing may pass it by one).

Device ids may hold ``.`` and ``:``, which NATS subjects and KV keys do not allow: they are
escaped as ``=2E`` and ``=3A``. The client's own reconnect is off: on a lost link the engine
builds a new connection and subscribes again (and re-creates the buckets and the stream if
the server lost them).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from gateway.bus.base import Holder, Transport
from gateway.bus.url import BusUrl
from gateway.errors import BusError, BusTimeout, BusUnavailable, NoResponder, TooManyCommands

PREFIX = "edgewire."
INSTANCES = "edgewire_instances"
PRESENCE = "edgewire_presence"
COMMANDS = "EDGEWIRE_COMMANDS"
COMMAND_MAX_AGE_S = 7 * 86400.0  # a queued command older than this is dropped by the server
CLAIM_ATTEMPTS = 20
CLOSE_WAIT_S = 5.0  # nats-py's close() can hang (flushing to a server that is gone): bounded


async def close_client(nc: Client) -> None:
    """Close a nats-py client, within CLOSE_WAIT_S; never raises (the link is being dropped anyway)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), CLOSE_WAIT_S)


def escape(device_id: str) -> str:
    """A device id as a subject token / KV key: ``.`` -> ``=2E``, ``:`` -> ``=3A`` (``=`` never occurs in ids)."""
    return device_id.replace(".", "=2E").replace(":", "=3A")


def unescape(token: str) -> str:
    return token.replace("=2E", ".").replace("=3A", ":")


class NatsTransport(Transport):
    kind = "nats"
    commands_durable = True
    commands_why = ("JetStream stream with file storage: kept across a server restart (written before the "
                    "publish is acknowledged; fsynced on the server's sync interval)")
    errors = (NatsError, OSError)

    def __init__(self, url: BusUrl) -> None:
        self.url = url
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.instance = ""
        self._generation = 0
        self._subs: dict[str, Any] = {}
        self._kv: dict[str, KeyValue] = {}
        self._lease_ttl_s = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def _jet(self) -> JetStreamContext:
        if self.js is None or self.nc is None or not self.nc.is_connected:
            raise BusUnavailable("not connected to NATS")
        return self.js

    # ------------------------------------------------------------ link
    async def connect(self, instance: str, channels: set[str]) -> None:
        self.instance = instance
        self._generation += 1
        generation = self._generation

        async def lost(*_args: Any) -> None:
            if generation == self._generation:
                self.broken(BusUnavailable("the connection to NATS was lost"))

        async def error(err: Exception) -> None:
            if generation == self._generation and not isinstance(err, NoRespondersError):
                self.broken(err)

        nc = await nats.connect(self.url.url, name=f"edgewire-{instance}", allow_reconnect=False,
                                connect_timeout=3, ping_interval=5, max_outstanding_pings=2,
                                disconnected_cb=lost, closed_cb=lost, error_cb=error)
        self.nc = nc
        self.js = nc.jetstream(timeout=5)
        self._kv.clear()
        self._subs = {}
        await nc.subscribe(f"{PREFIX}rpc.{instance}.*", cb=self._on_request)
        for channel in channels:
            await self.subscribe(channel)
        self._kv[PRESENCE] = await self.js.create_key_value(bucket=PRESENCE, history=1,
                                                            storage=StorageType.FILE)
        await self.js.add_stream(name=COMMANDS, subjects=[f"{PREFIX}cmd.*"], storage=StorageType.FILE,
                                 max_age=COMMAND_MAX_AGE_S, discard=DiscardPolicy.NEW)
        await nc.flush(timeout=5)

    async def disconnect(self) -> None:
        self._generation += 1  # callbacks of the old connection are ignored from now on
        for task in list(self._tasks):
            task.cancel()
        nc, self.nc, self.js = self.nc, None, None
        self._kv.clear()
        if nc is not None:
            await close_client(nc)

    async def _on_request(self, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        if kind == "probe":
            with contextlib.suppress(NatsError):
                await msg.respond(b"")
            return
        task = asyncio.get_running_loop().create_task(self._respond(kind, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respond(self, kind: str, msg: Msg) -> None:
        reply = await self.answer(kind, msg.data)
        with contextlib.suppress(NatsError, OSError):  # the requester times out
            await msg.respond(reply)

    async def subscribe(self, channel: str) -> None:
        if self.nc is None:
            raise BusUnavailable("not connected to NATS")

        async def on_message(msg: Msg) -> None:
            await self.deliver(channel, msg.data)

        self._subs[channel] = await self.nc.subscribe(f"{PREFIX}ch.{channel}", cb=on_message)

    async def publish(self, channel: str, data: bytes) -> None:
        self._jet()
        assert self.nc is not None
        await self.nc.publish(f"{PREFIX}ch.{channel}", data)

    async def request(self, instance: str, kind: str, data: bytes, timeout_s: float) -> bytes:
        self._jet()
        assert self.nc is not None
        try:
            msg = await self.nc.request(f"{PREFIX}rpc.{instance}.{kind}", data, timeout=timeout_s)
        except NoRespondersError:
            raise NoResponder(f"no instance {instance!r} is listening on the bus") from None
        except TimeoutError:
            raise BusTimeout(f"instance {instance!r} did not answer {kind!r} within {timeout_s:g} s") from None
        return msg.data

    async def probe(self, timeout_s: float) -> None:
        try:
            await self.request(self.instance, "probe", b"", timeout_s)
        except NoResponder:
            raise BusUnavailable("our own request subscription is gone") from None

    # ------------------------------------------------------------ leases
    async def _instances(self, ttl_s: float | None = None) -> KeyValue:
        kv = self._kv.get(INSTANCES)
        if kv is not None:
            return kv
        js = self._jet()
        if ttl_s is None:
            if not self._lease_ttl_s:
                raise BusError("no lease was written yet")
            ttl_s = self._lease_ttl_s
        try:
            kv = await js.create_key_value(bucket=INSTANCES, history=1, ttl=ttl_s, storage=StorageType.MEMORY)
        except BadRequestError:  # exists with another TTL (instances configured differently): align it
            info = await js.stream_info(f"KV_{INSTANCES}")
            info.config.max_age = ttl_s
            await js.update_stream(info.config)
            kv = await js.key_value(INSTANCES)
        self._kv[INSTANCES] = kv
        return kv

    async def lease_put(self, instance: str, boot: str, ttl_s: float, force: bool) -> str | None:
        self._lease_ttl_s = ttl_s
        kv = await self._instances(ttl_s)
        if not force:
            current = await self._get(kv, instance)
            if current is not None and current[0] != boot:
                return current[0]
        await kv.put(instance, boot.encode())
        return None

    async def lease_delete(self, instance: str, boot: str) -> None:
        kv = await self._instances()
        current = await self._get(kv, instance)
        if current is not None and current[0] == boot:
            with contextlib.suppress(KeyWrongLastSequenceError):
                await kv.delete(instance, last=current[1])

    async def leases(self) -> dict[str, str]:
        await self._instances()
        return {name: value for name, (value, _) in (await self._scan(INSTANCES)).items()}

    async def _scan(self, bucket: str) -> dict[str, tuple[str, int]]:
        """Every live key of a KV bucket with its value and revision, read message by message from
        its stream (nats-py's watchers and keys() can miss entries: their end-of-data marker races
        the first delivery)."""
        js = self._jet()
        prefix = f"$KV.{bucket}."
        found: dict[str, tuple[str, int]] = {}
        seq = 1
        while True:
            try:
                msg = await js.get_msg(f"KV_{bucket}", seq=seq, subject=f"{prefix}>", next=True)
            except NotFoundError:
                return found
            seq = (msg.seq or seq) + 1
            key = (msg.subject or "")[len(prefix):]
            if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                found.pop(key, None)
            elif msg.data is not None:
                found[key] = (msg.data.decode(), msg.seq or 0)

    @staticmethod
    async def _get(kv: KeyValue, key: str) -> tuple[str, int] | None:
        try:
            entry = await kv.get(key)
        except NotFoundError:
            return None
        if entry.value is None or entry.operation is not None:
            return None
        return entry.value.decode(), entry.revision or 0

    # ------------------------------------------------------------ presence
    def _presence(self) -> KeyValue:
        self._jet()
        return self._kv[PRESENCE]

    async def _entry(self, device_id: str) -> tuple[Holder, int] | None:
        current = await self._get(self._presence(), escape(device_id))
        if current is None:
            return None
        instance, _, boot = current[0].partition(" ")
        return Holder(instance, boot, current[1]), current[1]

    async def _write(self, device_id: str, instance: str, boot: str, last: int | None) -> Holder:
        """Create (last None) or compare-and-swap the entry; KeyWrongLastSequenceError if it moved."""
        kv = self._presence()
        value = f"{instance} {boot}".encode()
        key = escape(device_id)
        revision = await kv.create(key, value) if last is None else await kv.update(key, value, last=last)
        return Holder(instance, boot, revision)

    async def presence_claim(self, device_id: str, instance: str, boot: str) -> tuple[Holder, Holder | None]:
        for _ in range(CLAIM_ATTEMPTS):
            found = await self._entry(device_id)
            try:
                holder = await self._write(device_id, instance, boot, found[1] if found else None)
            except KeyWrongLastSequenceError:
                continue  # someone else wrote it meanwhile: read again
            return holder, found[0] if found else None
        raise BusError(f"presence entry of {device_id!r} kept changing; try again")

    async def presence_release(self, device_id: str, holder: Holder) -> bool:
        found = await self._entry(device_id)
        if found is None or not holder.same_session(found[0]):
            return False
        try:
            await self._presence().delete(escape(device_id), last=found[1])
        except KeyWrongLastSequenceError:
            return False
        return True

    async def presence_get(self, device_id: str) -> Holder | None:
        found = await self._entry(device_id)
        return found[0] if found else None

    async def presence_all(self) -> dict[str, Holder]:
        self._presence()
        result = {}
        for key, (value, revision) in (await self._scan(PRESENCE)).items():
            instance, _, boot = value.partition(" ")
            result[unescape(key)] = Holder(instance, boot, revision)
        return result

    async def presence_restore(self, entries: dict[str, Holder]) -> dict[str, Holder]:
        leases = await self.leases()
        result = {}
        for device_id, mine in entries.items():
            for _ in range(CLAIM_ATTEMPTS):
                found = await self._entry(device_id)
                if found is not None and found[0].instance != mine.instance and \
                        leases.get(found[0].instance) == found[0].boot:
                    result[device_id] = found[0]  # another live instance holds it now: lost
                    break
                try:
                    result[device_id] = await self._write(device_id, mine.instance, mine.boot,
                                                          found[1] if found else None)
                    break
                except KeyWrongLastSequenceError:
                    continue
        return result

    # ------------------------------------------------------------ commands
    async def _messages(self, device_id: str) -> list[tuple[str, bytes, int]]:
        js = self._jet()
        subject = f"{PREFIX}cmd.{escape(device_id)}"
        found: list[tuple[str, bytes, int]] = []
        seq = 1
        while True:
            try:
                msg = await js.get_msg(COMMANDS, seq=seq, subject=subject, next=True)
            except NotFoundError:
                return found
            command_id = (msg.headers or {}).get("Edgewire-Command", "")
            found.append((command_id, msg.data or b"", msg.seq or seq))
            seq = (msg.seq or seq) + 1

    async def command_put(self, device_id: str, command_id: str, data: bytes, max_pending: int,
                          expires_ms: int) -> None:
        if len(await self._messages(device_id)) >= max_pending:
            raise TooManyCommands(f"device {device_id!r} already has {max_pending} pending commands")
        await self._jet().publish(f"{PREFIX}cmd.{escape(device_id)}", data, stream=COMMANDS,
                                  headers={"Edgewire-Command": command_id})

    async def command_list(self, device_id: str) -> list[tuple[str, bytes]]:
        return [(command_id, data) for command_id, data, _ in await self._messages(device_id)]

    async def command_delete(self, device_id: str, command_id: str) -> bool:
        for found, _, seq in await self._messages(device_id):
            if found == command_id:
                try:
                    return await self._jet().delete_msg(COMMANDS, seq)
                except NotFoundError:
                    return False
        return False
