"""The Redis transport (redis-py asyncio): PUBLISH/SUBSCRIBE, keys with TTL, a hash, streams, Lua.

Keys and channels, all under ``edgewire:`` in the URL's database:

* ``inst:<instance>``: the lease, the instance's boot, ``PX`` TTL.
* ``presence``: hash device -> "instance boot version"; ``presence:version``: the last version
  handed out. Versions come from the server's clock (``TIME``, microseconds) and never go back,
  also across a restart that emptied the server.
* ``cmd:<device>``: a stream of queued commands (``XADD``/``XRANGE``/``XDEL``), expiring with
  its newest command.
* channels ``ch:<name>`` for fan-out and ``inbox:<instance>`` for requests, replies and probes.

The engine, not redis-py, reconnects: a broken link is dropped whole and a new client and a
new pub/sub connection are made, with every subscription sent again. Redis Cluster is not
supported (the scripts touch keys they do not declare).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any, ClassVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.bus.base import Holder, Transport
from gateway.bus.url import BusUrl
from gateway.errors import BusTimeout, BusUnavailable, NoResponder, TooManyCommands

PREFIX = "edgewire:"
COMMAND_GRACE_MS = 60_000  # a queue outlives its newest command by this much, then Redis deletes it
RESTORE_BATCH = 500

# Versions: the server's clock in microseconds, above the last one handed out.
_VERSION = """
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if v <= last then v = last + 1 end
redis.call('SET', KEYS[2], string.format('%d', v))
"""

CLAIM = _VERSION + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local new = ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. string.format('%d', v)
redis.call('HSET', KEYS[1], ARGV[1], new)
return {new, old or false}
"""

RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# ARGV: instance, boot, lease key prefix, then device ids. Returns the entry of each device after the attempt.
RESTORE = """
local result = {}
for i = 4, #ARGV do
  local device = ARGV[i]
  local cur = redis.call('HGET', KEYS[1], device)
  local write = true
  if cur then
    local inst, boot = string.match(cur, '^(%S+) (%S+) ')
    if inst and inst ~= ARGV[1] and redis.call('GET', ARGV[3] .. inst) == boot then write = false end
  end
  if write then
""" + _VERSION.replace("\n", "\n    ") + """
    cur = ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. string.format('%d', v)
    redis.call('HSET', KEYS[1], device, cur)
  end
  result[#result + 1] = cur
end
return result
"""

LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and ARGV[3] == '0' then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

LEASE_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

COMMAND_PUT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'd', ARGV[2])
local expires = tonumber(ARGV[4])
local current = redis.call('PEXPIRETIME', KEYS[1])
if current < expires then redis.call('PEXPIREAT', KEYS[1], expires) end
return redis.call('XLEN', KEYS[1])
"""


POOL_SIZE = 32  # connections to Redis per instance (plus the subscriber's)
POOL_WAIT_S = 10.0  # longer than the engine's operation timeout, which fires first (BusTimeout)


class RedisTransport(Transport):
    kind = "redis"
    errors = (RedisError, OSError)

    def __init__(self, url: BusUrl) -> None:
        self.url = url
        self.client: aioredis.Redis | None = None
        self.pubsub: Any = None
        self.instance = ""
        self.commands_durable = False
        self.commands_why = "Redis streams, durable as far as the server persists them (appendonly yes)"
        self._aof = False
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._scripts: dict[str, Any] = {}

    @staticmethod
    def _channel(name: str) -> str:
        return f"{PREFIX}ch:{name}"

    @staticmethod
    def _inbox(instance: str) -> str:
        return f"{PREFIX}inbox:{instance}"

    def _client(self) -> aioredis.Redis:
        if self.client is None:
            raise BusUnavailable("not connected to Redis")
        return self.client

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    # ------------------------------------------------------------ link
    async def connect(self, instance: str, channels: set[str]) -> None:
        self.instance = instance
        # A bounded pool that makes a burst of operations (hundreds of devices reconnecting at once)
        # wait for a free connection: redis-py's default pool (100) raises MaxConnectionsError
        # instead, which would look like a broken link and turn the bus degraded.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url.url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S, socket_connect_timeout=3,
            socket_timeout=10, retry=Retry(NoBackoff(), 0), health_check_interval=0, decode_responses=False)
        client = aioredis.Redis(connection_pool=pool)
        self.client = client
        await client.ping()
        self._scripts = {name: client.register_script(text) for name, text in (
            ("claim", CLAIM), ("release", RELEASE), ("restore", RESTORE), ("lease", LEASE),
            ("lease_delete", LEASE_DELETE), ("command_put", COMMAND_PUT))}
        info = await client.info("persistence")
        self._aof = bool(info.get("aof_enabled"))
        self.commands_durable = self._aof
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub = pubsub
        await pubsub.subscribe(self._inbox(instance), *(self._channel(c) for c in channels))
        self._reader = asyncio.get_running_loop().create_task(self._read(pubsub))

    def info(self) -> dict[str, object]:
        return {"persistence": "appendonly" if self._aof else "none"}

    async def disconnect(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        for task in list(self._tasks):
            task.cancel()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(BusUnavailable("the link to Redis was closed"))
        self._waiting.clear()
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose(close_connection_pool=True)

    async def _read(self, pubsub: Any) -> None:
        inbox = self._inbox(self.instance).encode()
        prefix = f"{PREFIX}ch:".encode()
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is None or message.get("type") != "message":
                    continue
                channel: bytes = message["channel"]
                data: bytes = message["data"]
                if channel == inbox:
                    self._on_inbox(data)
                elif channel.startswith(prefix):
                    await self.deliver(channel[len(prefix):].decode(), data)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the link is gone (server restarted, socket reset): the engine reconnects
            self.broken(err)

    def _on_inbox(self, data: bytes) -> None:
        header, _, body = data.partition(b"\n")
        parts = header.decode("utf-8", "replace").split(" ")
        if parts[0] in ("REP", "PRB") and len(parts) >= 2:
            future = self._waiting.pop(parts[1], None)
            if future is not None and not future.done():
                future.set_result(body)
        elif parts[0] == "REQ" and len(parts) == 4:
            task = asyncio.get_running_loop().create_task(self._respond(parts[1], parts[2], parts[3], body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _respond(self, rid: str, sender: str, kind: str, body: bytes) -> None:
        reply = await self.answer(kind, body)
        with contextlib.suppress(RedisError, OSError, BusUnavailable):  # the requester times out
            await self._client().publish(self._inbox(sender), f"REP {rid}\n".encode() + reply)

    async def subscribe(self, channel: str) -> None:
        if self.pubsub is None:
            raise BusUnavailable("not connected to Redis")
        await self.pubsub.subscribe(self._channel(channel))

    async def publish(self, channel: str, data: bytes) -> None:
        await self._client().publish(self._channel(channel), data)

    async def _roundtrip(self, inbox: str, header: str, data: bytes, timeout_s: float, rid: str) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            receivers = await self._client().publish(inbox, header.encode() + b"\n" + data)
            if receivers == 0:
                raise NoResponder(f"no subscriber on {inbox}")
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise BusTimeout(f"no reply on {inbox} within {timeout_s:g} s") from None
        finally:
            self._waiting.pop(rid, None)

    async def request(self, instance: str, kind: str, data: bytes, timeout_s: float) -> bytes:
        rid = f"{self.instance}-{next(self._ids)}"
        try:
            return await self._roundtrip(self._inbox(instance), f"REQ {rid} {self.instance} {kind}", data,
                                         timeout_s, rid)
        except NoResponder:
            raise NoResponder(f"no instance {instance!r} is listening on the bus") from None

    async def probe(self, timeout_s: float) -> None:
        rid = f"probe-{next(self._ids)}"
        try:
            await self._roundtrip(self._inbox(self.instance), f"PRB {rid}", b"", timeout_s, rid)
        except NoResponder:
            raise BusUnavailable("our own inbox has no subscriber: the subscriptions are gone") from None

    # ------------------------------------------------------------ leases
    async def lease_put(self, instance: str, boot: str, ttl_s: float, force: bool) -> str | None:
        other = await self._run("lease", [f"{PREFIX}inst:{instance}"], [boot, int(ttl_s * 1000), int(force)])
        return other.decode() if other else None

    async def lease_delete(self, instance: str, boot: str) -> None:
        await self._run("lease_delete", [f"{PREFIX}inst:{instance}"], [boot])

    async def leases(self) -> dict[str, str]:
        client = self._client()
        keys: list[bytes] = [key async for key in client.scan_iter(match=f"{PREFIX}inst:*", count=500)]
        if not keys:
            return {}
        values = cast(list[bytes | None], await client.mget(keys))
        start = len(f"{PREFIX}inst:")
        return {key.decode()[start:]: value.decode() for key, value in zip(keys, values, strict=True)
                if value is not None}

    # ------------------------------------------------------------ presence
    _keys: ClassVar[list[str]] = [f"{PREFIX}presence", f"{PREFIX}presence:version"]

    async def presence_claim(self, device_id: str, instance: str, boot: str) -> tuple[Holder, Holder | None]:
        new, old = await self._run("claim", self._keys, [device_id, instance, boot])
        holder = Holder.decode(new)
        assert holder is not None
        return holder, Holder.decode(old) if old else None

    async def presence_release(self, device_id: str, holder: Holder) -> bool:
        return bool(await self._run("release", self._keys[:1], [device_id, holder.encode()]))

    async def presence_get(self, device_id: str) -> Holder | None:
        return Holder.decode(await self._client().hget(self._keys[0], device_id))

    async def presence_all(self) -> dict[str, Holder]:
        result = {}
        async for device, value in self._client().hscan_iter(self._keys[0], count=1000):
            holder = Holder.decode(value)
            if holder is not None:
                result[device.decode()] = holder
        return result

    async def presence_restore(self, entries: dict[str, Holder]) -> dict[str, Holder]:
        result: dict[str, Holder] = {}
        devices = list(entries)
        for start in range(0, len(devices), RESTORE_BATCH):
            batch = devices[start:start + RESTORE_BATCH]
            mine = entries[batch[0]]
            values = await self._run("restore", self._keys, [mine.instance, mine.boot, f"{PREFIX}inst:", *batch])
            for device, value in zip(batch, values, strict=True):
                holder = Holder.decode(value)
                if holder is not None:
                    result[device] = holder
        return result

    # ------------------------------------------------------------ commands
    async def command_put(self, device_id: str, command_id: str, data: bytes, max_pending: int,
                          expires_ms: int) -> None:
        queued = await self._run("command_put", [f"{PREFIX}cmd:{device_id}"],
                                 [command_id, data, max_pending, expires_ms + COMMAND_GRACE_MS])
        if queued == -1:
            raise TooManyCommands(f"device {device_id!r} already has {max_pending} pending commands")

    async def _entries(self, device_id: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        entries = await self._client().xrange(f"{PREFIX}cmd:{device_id}")
        return cast(list[tuple[bytes, dict[bytes, bytes]]], entries or [])

    async def command_list(self, device_id: str) -> list[tuple[str, bytes]]:
        return [(fields[b"id"].decode(), fields[b"d"]) for _, fields in await self._entries(device_id)
                if b"id" in fields and b"d" in fields]

    async def command_delete(self, device_id: str, command_id: str) -> bool:
        wanted = command_id.encode()
        for entry_id, fields in await self._entries(device_id):
            if fields.get(b"id") == wanted:
                return bool(await self._client().xdel(f"{PREFIX}cmd:{device_id}", entry_id))
        return False
