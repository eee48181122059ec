"""The host bus: the in-process broker served over a Unix socket, so that the worker processes of
one gateway host are instances on one bus (docs/scaling.md section 12, docs/performance.md).

``HostBroker`` runs in the gateway's host process (gateway/workers.py). It keeps one
``MemoryBroker`` (channels, requests, leases, presence, command queues: gateway/bus/memory.py)
and gives each worker that connects its own server-side ``MemoryTransport`` on it, so the
semantics are exactly the in-process bus's, which the bus contract suite holds every transport
to. ``LocalTransport`` is a worker's end: every Transport call is one message to the broker and
its reply; deliveries and requests addressed to the worker come back on the same socket.

Framing: gateway/ipc.py (a length, then a pickle; only the gateway's own processes connect).

Messages, worker -> broker: ``("call", id, method, args)``, ``("ans", id, ok, payload)``.
Broker -> worker: ``("ret", id, ok, payload)``, ``("deliver", channel, data)``,
``("req", id, kind, data)``. A worker's link that breaks (the worker died, or the host stopped)
is a broken bus link on both sides, as a Redis connection that drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from pathlib import Path
from typing import Any

from gateway.bus.base import Holder, Transport
from gateway.bus.memory import BrokerDown, MemoryBroker, MemoryTransport
from gateway.errors import NoResponder, TooManyCommands
from gateway.ipc import READ_ERRORS, frame, read_frame

# Exceptions that cross the socket as themselves; anything else arrives as a ConnectionError.
_PASSED: dict[str, type[BaseException]] = {cls.__name__: cls for cls in (
    NoResponder, TooManyCommands, TimeoutError, BrokerDown, ConnectionResetError, ValueError)}
# The Transport calls a worker may make of its server-side transport.
_METHODS = frozenset({
    "subscribe", "publish", "request", "probe", "lease_put", "lease_delete", "leases", "presence_claim",
    "presence_release", "presence_get", "presence_all", "presence_restore", "command_put", "command_list",
    "command_delete"})
_SLOW = frozenset({"request", "probe"})  # may wait on another worker: run as tasks, the others inline (in order)


def _error(err: BaseException) -> tuple[str, str]:
    return type(err).__name__, str(err)


def _rebuild(payload: Any) -> BaseException:
    name, text = payload
    return _PASSED.get(name, ConnectionResetError)(text)


def _settle(future: asyncio.Future[Any] | None, ok: bool, payload: Any) -> None:
    """Resolve a waiting call with a reply's payload, or its error rebuilt."""
    if future is not None and not future.done():
        if ok:
            future.set_result(payload)
        else:
            future.set_exception(_rebuild(payload))


class _Client:
    """The broker's side of one worker's link."""

    def __init__(self, broker: MemoryBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.transport = MemoryTransport(broker)
        self.transport.bind(self._deliver, self._answer, self._broken)
        self.answers: dict[int, asyncio.Future[bytes]] = {}
        self.next_id = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(message))

    async def _deliver(self, channel: str, data: bytes) -> None:
        self.send(("deliver", channel, data))

    async def _answer(self, kind: str, data: bytes) -> bytes:
        self.next_id += 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.answers[self.next_id] = future
        self.send(("req", self.next_id, kind, data))
        try:
            return await future
        finally:
            self.answers.pop(self.next_id, None)

    def _broken(self, err: BaseException) -> None:
        self.writer.close()

    async def serve(self) -> None:
        try:
            while True:
                message = await read_frame(self.reader)
                if message[0] == "ans":
                    _settle(self.answers.get(message[1]), message[2], message[3])
                elif message[0] == "call":
                    _, ident, method, args = message
                    if method == "connect":
                        await self._run(ident, "connect", args)
                    elif method in _SLOW:
                        task = asyncio.get_running_loop().create_task(self._run(ident, method, args))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                    else:
                        await self._run(ident, method, args)
        except READ_ERRORS:
            pass
        finally:
            await self.close()

    async def _run(self, ident: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            result: Any = None
            if method == "connect":
                await self.transport.connect(*args)
            elif method in _METHODS:
                result = await getattr(self.transport, method)(*args)
            else:
                raise ConnectionResetError(f"no host bus call {method!r}")
        except Exception as err:
            self.send(("ret", ident, False, _error(err)))
        else:
            self.send(("ret", ident, True, result))

    async def close(self) -> None:
        for future in self.answers.values():
            if not future.done():
                future.set_exception(NoResponder("the worker left the host bus"))
        for task in list(self.tasks):
            task.cancel()
        await self.transport.disconnect()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class HostBroker:
    """The host process's broker: ``await start()``, workers connect to ``path``, ``await close()``."""

    def __init__(self, path: str | Path, broker: MemoryBroker | None = None) -> None:
        self.path = Path(path)
        self.broker = broker or MemoryBroker()
        self.clients: set[_Client] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a host process that was killed
        self.broker.start(lose_data=False)
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(self.broker, reader, writer)
        self.clients.add(client)
        try:
            await client.serve()
        finally:
            self.clients.discard(client)

    async def close(self) -> None:
        """Stop serving and break every link (a server outage for the workers that are left)."""
        if self._server is not None:
            self._server.close()
        self.broker.stop()
        for client in list(self.clients):
            await client.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class LocalTransport(Transport):
    """A worker's link to the HostBroker of its host process."""

    kind = "host"
    commands_durable = False
    commands_why = ("host bus: queued commands live in the gateway's host process, which every worker "
                    "shares; they end with it")
    errors = (ConnectionError, EOFError)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._delivery: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ link
    async def connect(self, instance: str, channels: set[str]) -> None:
        await self.disconnect()
        reader, writer = await asyncio.open_unix_connection(str(self.path))
        self._writer = writer
        loop = asyncio.get_running_loop()
        self._reader_task = loop.create_task(self._read_loop(reader, writer))
        self._delivery = loop.create_task(self._deliver_loop())
        await self._call("connect", instance, set(channels))

    async def disconnect(self) -> None:
        writer, self._writer = self._writer, None
        tasks = [t for t in (self._reader_task, self._delivery) if t is not None]
        self._reader_task = self._delivery = None
        if writer is not None:
            writer.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_calls(ConnectionResetError("host bus link closed"))
        self._inbox = asyncio.Queue()

    def _fail_calls(self, err: BaseException) -> None:
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(err)

    async def _call(self, method: str, *args: Any) -> Any:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionResetError("not connected to the host bus")
        self._next += 1
        ident = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[ident] = future
        try:
            writer.write(frame(("call", ident, method, args)))
            return await future
        finally:
            self._calls.pop(ident, None)

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        error: BaseException
        try:
            while True:
                message = await read_frame(reader)
                kind = message[0]
                if kind == "ret":
                    _settle(self._calls.get(message[1]), message[2], message[3])
                elif kind == "deliver":
                    self._inbox.put_nowait((message[1], message[2]))
                elif kind == "req":
                    task = asyncio.get_running_loop().create_task(self._answer_request(writer, *message[1:]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, EOFError) as err:
            error = ConnectionResetError(f"the host bus closed the link ({type(err).__name__})")
        except (ConnectionError, OSError, pickle.PickleError) as err:
            error = ConnectionResetError(f"host bus link failed: {err}")
        if self._writer is writer:
            self._writer = None
            writer.close()
            self._fail_calls(error)
            self.broken(error)

    async def _answer_request(self, writer: asyncio.StreamWriter, ident: int, kind: str, data: bytes) -> None:
        try:
            reply = await self.answer(kind, data)
        except Exception as err:
            message: tuple[Any, ...] = ("ans", ident, False, _error(err))
        else:
            message = ("ans", ident, True, reply)
        if not writer.is_closing():
            writer.write(frame(message))

    async def _deliver_loop(self) -> None:
        while True:
            channel, data = await self._inbox.get()
            await self.deliver(channel, data)

    async def subscribe(self, channel: str) -> None:
        await self._call("subscribe", channel)

    async def publish(self, channel: str, data: bytes) -> None:
        await self._call("publish", channel, data)

    async def request(self, instance: str, kind: str, data: bytes, timeout_s: float) -> bytes:
        result: bytes = await self._call("request", instance, kind, data, timeout_s)
        return result

    async def probe(self, timeout_s: float) -> None:
        await self._call("probe", timeout_s)

    # ------------------------------------------------------------ leases
    async def lease_put(self, instance: str, boot: str, ttl_s: float, force: bool) -> str | None:
        result: str | None = await self._call("lease_put", instance, boot, ttl_s, force)
        return result

    async def lease_delete(self, instance: str, boot: str) -> None:
        await self._call("lease_delete", instance, boot)

    async def leases(self) -> dict[str, str]:
        result: dict[str, str] = await self._call("leases")
        return result

    # ------------------------------------------------------------ presence
    async def presence_claim(self, device_id: str, instance: str, boot: str) -> tuple[Holder, Holder | None]:
        result: tuple[Holder, Holder | None] = await self._call("presence_claim", device_id, instance, boot)
        return result

    async def presence_release(self, device_id: str, holder: Holder) -> bool:
        return bool(await self._call("presence_release", device_id, holder))

    async def presence_get(self, device_id: str) -> Holder | None:
        result: Holder | None = await self._call("presence_get", device_id)
        return result

    async def presence_all(self) -> dict[str, Holder]:
        result: dict[str, Holder] = await self._call("presence_all")
        return result

    async def presence_restore(self, entries: dict[str, Holder]) -> dict[str, Holder]:
        result: dict[str, Holder] = await self._call("presence_restore", entries)
        return result

    # ------------------------------------------------------------ commands
    async def command_put(self, device_id: str, command_id: str, data: bytes, max_pending: int,
                          expires_ms: int) -> None:
        await self._call("command_put", device_id, command_id, data, max_pending, expires_ms)

    async def command_list(self, device_id: str) -> list[tuple[str, bytes]]:
        result: list[tuple[str, bytes]] = await self._call("command_list", device_id)
        return result

    async def command_delete(self, device_id: str, command_id: str) -> bool:
        return bool(await self._call("command_delete", device_id, command_id))
