"""The bus as the gateway sees it: one engine over any transport (docs/scaling.md section 7).

* **Health.** ``connecting`` until the first link is up, ``ok`` once subscriptions,
  lease and presence are in place AND a probe went through the broker and came back to our
  own subscription; ``degraded`` from the moment a link breaks (or a probe fails, or another
  process uses our instance id) until all of that is true again; ``closed`` after close().
* **Reconnecting.** The engine, not the client library, rebuilds the link: a fresh
  connection, every subscription again, the lease, then this instance's presence entries
  (devices claimed elsewhere meanwhile are reported lost), then the reconnect hooks.
* **Fail fast.** While not ``ok``, publish, request and the command queue raise
  BusUnavailable at once; presence claims are recorded here and written when the bus is back.
* **Envelopes.** Messages are JSON objects; each is wrapped as ``{"v": 1, "from": instance,
  "m": message}``. A malformed one is dropped and counted, and a failing handler is logged
  and counted: neither stops the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson

from gateway.backoff import Backoff
from gateway.bus.base import Holder, Transport
from gateway.bus.command_queue import CommandQueue
from gateway.bus.presence import Presence
from gateway.bus.url import check_name
from gateway.errors import BusError, BusTimeout, BusUnavailable, GatewayError, RemoteError
from gateway.logs import log

CONNECTING = "connecting"
OK = "ok"
DEGRADED = "degraded"
CLOSED = "closed"
VERSION = 1

Handler = Callable[[dict[str, Any], str], Awaitable[None] | None]
Responder = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]
Hook = Callable[[], Awaitable[None]]
T = TypeVar("T")


class Bus:
    """One instance's end of the bus. Create, ``subscribe``/``serve``, ``start()``, ..., ``close()``."""

    def __init__(self, transport: Transport, instance_id: str, *, display: str = "", lease_ttl_s: float = 10.0,
                 op_timeout_s: float = 5.0, backoff_s: tuple[float, float] = (0.2, 5.0),
                 max_pending_commands: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.kind = transport.kind
        self.instance_id = check_name("instance_id", instance_id)
        self.boot = secrets.token_hex(6)  # this process's incarnation: a restarted instance is a new holder
        self.display = display or transport.kind
        self.lease_ttl_s = lease_ttl_s
        self.heartbeat_s = lease_ttl_s / 3
        self.op_timeout_s = op_timeout_s
        self.backoff_s = backoff_s
        self.clock = clock
        self.presence = Presence(self)
        self.commands = CommandQueue(self, max_pending_commands)
        self.state = CONNECTING
        self.since = clock()
        self.last_error: str | None = None
        self.reconnects = 0  # links re-established after a loss
        self.dropped: dict[str, int] = {}  # messages dropped, by reason
        self._handlers: dict[str, list[tuple[Handler, bool]]] = {}
        self._responders: dict[str, Responder] = {}
        self._hooks: list[Hook] = []
        self._task: asyncio.Task[None] | None = None
        self._broken = asyncio.Event()
        self._broken_reason: BaseException | None = None
        self._closing = False
        self._ok = asyncio.Event()
        self._probes: dict[tuple[str, str], asyncio.Future[None]] = {}
        transport.bind(self._deliver, self._answer, self._on_broken)

    # ------------------------------------------------------------ registration
    async def subscribe(self, channel: str, handler: Handler, include_self: bool = False) -> None:
        """Call ``handler(message, sender)`` for each message on ``channel``, now and after every
        reconnect. Messages this instance published are skipped unless ``include_self``."""
        check_name("channel", channel)
        first = channel not in self._handlers
        self._handlers.setdefault(channel, []).append((handler, include_self))
        if first and self.state == OK:
            with contextlib.suppress(BusError):  # the link broke: the reconnect subscribes to every channel
                await self.call(self.transport.subscribe(channel))

    def serve(self, kind: str, responder: Responder) -> None:
        """Answer requests of ``kind`` addressed to this instance with ``await responder(message, sender)``.
        Raising GatewayError (with a ``code``) answers an error the requester receives as RemoteError."""
        self._responders[check_name("request kind", kind)] = responder

    def on_reconnect(self, hook: Hook) -> None:
        """Run ``await hook()`` each time the link is back (after presence was rebuilt), before ``ok``."""
        self._hooks.append(hook)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start connecting in the background; never fails because the bus is unreachable."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"edgewire-bus-{self.kind}")

    async def wait_ok(self, timeout_s: float) -> None:
        """Wait until the bus is ``ok`` (tests, demos); BusTimeout after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._ok.wait(), timeout_s)
        except TimeoutError:
            raise BusTimeout(f"bus {self.display} not ok within {timeout_s:g} s: {self.last_error}") from None

    async def close(self) -> None:
        """Stop: release the lease (peers then see this instance gone at once) and the link."""
        if self._closing:
            return
        self._closing = True
        if self.state == OK:
            with contextlib.suppress(Exception):
                await self.call(self.presence.release_all())
            with contextlib.suppress(Exception):
                await self.call(self.transport.lease_delete(self.instance_id, self.boot))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.transport.disconnect()
        self._set(CLOSED)

    @property
    def ok(self) -> bool:
        return self.state == OK

    def health(self) -> dict[str, Any]:
        """For /healthz: state, how long in it, reconnects, the last error, drops, command durability."""
        return {"state": self.state, "bus": self.kind, "url": self.display, "instance": self.instance_id,
                "since_s": round(self.clock() - self.since, 1), "reconnects": self.reconnects,
                "last_error": self.last_error, "subscriptions": len(self._handlers),
                "devices_held": len(self.presence.local), "dropped": dict(self.dropped),
                "commands_durable": self.transport.commands_durable, **self.transport.info()}

    # ------------------------------------------------------------ messages
    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every instance subscribed to ``channel`` (at most once)."""
        self.require_ok()
        await self.call(self.transport.publish(channel, self._wrap(message)))

    async def request(self, instance: str, kind: str, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Ask ``instance`` and return its answer. NoResponder (nobody of that name listens),
        BusTimeout, RemoteError (it answered an error), BusUnavailable (our link is down)."""
        self.require_ok()
        raw = await self.call(self.transport.request(instance, kind, self._wrap(message), timeout_s),
                               timeout_s + self.op_timeout_s)
        reply = self._unwrap(raw)
        if reply is None:
            raise BusError(f"instance {instance!r} answered {kind!r} with a malformed reply")
        if reply.get("ok") is True:
            answer = reply.get("m")
            return answer if isinstance(answer, dict) else {}
        raise RemoteError(str(reply.get("code", "error")), f"instance {instance!r} refused {kind!r}: "
                          f"{reply.get('msg', 'no message')}")

    def require_ok(self) -> None:
        if self.state != OK:
            raise BusUnavailable(f"the bus ({self.display}) is {self.state}: {self.last_error or 'starting'}; "
                                 "try again when /healthz shows it ok")

    def _wrap(self, message: dict[str, Any]) -> bytes:
        return orjson.dumps({"v": VERSION, "from": self.instance_id, "m": message})

    def _unwrap(self, raw: bytes) -> dict[str, Any] | None:
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(envelope, dict) or envelope.get("v") != VERSION:
            return None
        return envelope

    def drop(self, reason: str) -> None:
        """Count one message dropped for ``reason`` (the facets' too; in /healthz)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    async def _deliver(self, channel: str, raw: bytes) -> None:
        envelope = self._unwrap(raw)
        if envelope is not None and "probe" in envelope:
            if envelope.get("from") == self.instance_id:
                future = self._probes.pop((channel, str(envelope["probe"])), None)
                if future is not None and not future.done():
                    future.set_result(None)
            return  # peers' probes are not for us
        message = envelope.get("m") if envelope else None
        sender = envelope.get("from") if envelope else None
        if not isinstance(message, dict) or not isinstance(sender, str):
            self.drop("malformed")
            log("bus_message_dropped", logging.WARNING, channel=channel, reason="malformed")
            return
        for handler, include_self in self._handlers.get(channel, ()):
            if sender == self.instance_id and not include_self:
                continue
            try:
                result = handler(message, sender)
                if result is not None:
                    await result
            except Exception as err:  # a handler's bug must not end the subscription
                self.drop("handler_failed")
                log("bus_handler_failed", logging.ERROR, channel=channel, error=repr(err)[:300])

    async def _answer(self, kind: str, raw: bytes) -> bytes:
        envelope = self._unwrap(raw)
        message = envelope.get("m") if envelope else None
        sender = envelope.get("from") if envelope else None
        responder = self._responders.get(kind)
        if not isinstance(message, dict) or not isinstance(sender, str):
            reply: dict[str, Any] = {"v": VERSION, "ok": False, "code": "bad_request", "msg": "malformed request"}
        elif responder is None:
            reply = {"v": VERSION, "ok": False, "code": "no_such_request", "msg": f"no handler for {kind!r}"}
        else:
            try:
                reply = {"v": VERSION, "ok": True, "m": await responder(message, sender)}
            except GatewayError as err:
                reply = {"v": VERSION, "ok": False, "code": getattr(err, "code", "error"), "msg": str(err)}
            except Exception as err:
                log("bus_responder_failed", logging.ERROR, kind=kind, error=repr(err)[:300])
                reply = {"v": VERSION, "ok": False, "code": "internal_error", "msg": f"{kind} failed"}
        return orjson.dumps(reply)

    # ------------------------------------------------------------ the link (gateway/bus/link.py: the facets' interface)
    async def call(self, operation: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run one transport operation in service with a deadline; map its failures to BusError (and a broken link)."""
        try:
            return await asyncio.wait_for(operation, timeout_s or self.op_timeout_s)
        except BusTimeout:
            raise
        except BusError as err:
            if not isinstance(err, RemoteError) and err.code == "bus_unavailable":
                self._on_broken(err)
            raise
        except TimeoutError:
            raise BusTimeout(f"the bus ({self.display}) did not answer within "
                             f"{timeout_s or self.op_timeout_s:g} s") from None
        except self.transport.errors as err:
            self._on_broken(err)
            raise BusUnavailable(f"the bus ({self.display}) failed: {_describe(err)}") from err

    def _on_broken(self, err: BaseException) -> None:
        if self._closing:
            return
        if self._broken_reason is None:
            self._broken_reason = err
        self._broken.set()
        if self.state == OK:
            self._set(DEGRADED, _describe(err))

    def _set(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.since = self.clock()
            level = logging.INFO if state in (OK, CLOSED) else logging.WARNING
            log("bus_state", level, bus=self.kind, url=self.display, state=state, error=error)
        self.state = state
        if error is not None:
            self.last_error = error
        if state == OK:
            self._ok.set()
        else:
            self._ok.clear()

    async def _run(self) -> None:
        backoff = Backoff(*self.backoff_s)
        connected_before = False
        while not self._closing:
            try:
                await self._establish()
                if connected_before:
                    self.reconnects += 1
                connected_before = True
                backoff.reset()
                self._set(OK)
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self._closing:
                    break
                self._set(DEGRADED if connected_before else CONNECTING, _describe(err))
            await self.transport.disconnect()
            if self._closing:
                break
            await asyncio.sleep(backoff.next_s())

    async def _establish(self) -> None:
        self._broken.clear()
        self._broken_reason = None
        transport = self.transport
        await asyncio.wait_for(transport.connect(self.instance_id, set(self._handlers)), self.op_timeout_s * 2)
        await self.step(transport.lease_put(self.instance_id, self.boot, self.lease_ttl_s, True))
        await self.presence.rebuild()
        for hook in self._hooks:
            await hook()
        await self._probe()
        if self._broken.is_set():
            raise BusUnavailable(f"the link broke while rebuilding: {_describe(self._broken_reason)}")

    async def step(self, operation: Coroutine[Any, Any, T]) -> T:
        """Run one transport operation of a (re)connect or heartbeat with a deadline; failures go to ``_run``."""
        try:
            return await asyncio.wait_for(operation, self.op_timeout_s)
        except TimeoutError:
            raise BusTimeout(f"the bus ({self.display}) did not answer within {self.op_timeout_s:g} s") from None

    async def _probe(self) -> None:
        """Prove every subscription works: our own request path, and a probe on each channel that
        must come back to our own handler through the broker (a silently lost subscription fails)."""
        await self.step(self.transport.probe(self.op_timeout_s))
        token = secrets.token_hex(4)
        loop = asyncio.get_running_loop()
        waits = []
        for channel in list(self._handlers):
            future: asyncio.Future[None] = loop.create_future()
            self._probes[(channel, token)] = future
            waits.append(future)
            await self.step(self.transport.publish(channel, orjson.dumps(
                {"v": VERSION, "from": self.instance_id, "probe": token})))
        try:
            if waits:
                await asyncio.wait(waits, timeout=self.op_timeout_s)
            lost = sorted(channel for (channel, t), f in self._probes.items() if t == token and not f.done())
            if lost:
                raise BusUnavailable(f"no delivery on channel(s) {', '.join(lost)}: subscription lost")
        finally:
            for key in [key for key in self._probes if key[1] == token]:
                self._probes.pop(key).cancel()

    async def _watch(self) -> None:
        """Heartbeat (lease), pending releases and the probe every ``heartbeat_s``, until the link breaks."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), self.heartbeat_s)
            if self._broken.is_set():
                raise BusUnavailable(f"link lost: {_describe(self._broken_reason)}")
            other = await self.step(self.transport.lease_put(self.instance_id, self.boot, self.lease_ttl_s, False))
            if other is not None:
                self._set(DEGRADED, f"instance_id {self.instance_id!r} is also used by another process "
                                    f"(boot {other}); give every instance its own id")
                continue
            await self.presence.retry_releases()
            await self._probe()
            if self.state != OK:
                self._set(OK)


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "unknown"
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}"[:300] if not isinstance(err, GatewayError) else text[:300]


__all__ = ["CLOSED", "CONNECTING", "DEGRADED", "OK", "Bus", "Handler", "Holder", "Hook", "Responder"]
