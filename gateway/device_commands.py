"""Commands to devices (docs/protocol.md section 8, docs/scaling.md section 4): the one command
path of the admin API, the dashboard and the MQTT bridge, on one instance or across several.

``run(device_id, name, args, timeout)`` queues the command's envelope under its device on the
bus's durable queue (``Bus.commands``; in process memory for the embedded bus) before anything
is sent, then sends it on the device's session: here, or on the instance presence names (a
``command`` request over the bus). A device that is offline gets it when it connects, on any
instance, while it has not expired (``timeout``); one that never connected (no reading stored)
is refused at once with ``device_offline``; one that moves to another instance before
answering gets it again there (same id: the device core answers a repeated id from its cache).
The result deletes the queued entry (the acknowledgement of the id) and goes back to the
instance of the caller (a ``result`` request). A device that goes offline with the command
unanswered (its session ended without a takeover or a drain) fails it with ``device_offline``.

Command ids are random (96 bits), so no device can guess another's. A result counts only on the
connection the command was sent on: the core (GatewaySession) refuses an id it did not send
with ``no_such_command``, and here the device must be the one the command is queued for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from websockets.exceptions import ConnectionClosed

from gateway.errors import BusError, CommandError, DeviceOffline, TooManyCommands
from gateway.logs import log
from gateway.supervisor import spawn
from protocol.gateway import GatewaySession

if TYPE_CHECKING:
    from gateway.bus import Bus

COMMAND_REQUEST = "command"  # bus request to the holder: {envelope} -> {"delivered": bool}
RESULT_REQUEST = "result"  # bus request to the caller's instance: {id, device, result | error, msg}
LOST_GRACE_S = 2.0  # after a bus restart, how long a vanished command may still be answered in flight

Envelope = dict[str, Any]


class CommandTarget(Protocol):
    """A live device connection, as far as commands are concerned."""

    device_id: str
    session: GatewaySession

    async def send(self, frame: str) -> None: ...


def new_command_id() -> str:
    return "c-" + secrets.token_urlsafe(12)


def command_error(code: str, message: str) -> CommandError | DeviceOffline:
    """The exception for a failed command's code (``device_offline`` is DeviceOffline, as callers expect)."""
    return DeviceOffline(message) if code == DeviceOffline.code else CommandError(code, message)


class Commands:
    """Commands this instance's callers wait for (``pending``), and the ones sent on its sessions."""

    def __init__(self, bus: Bus, find: Callable[[str], CommandTarget | None],
                 registered: Callable[[str], Awaitable[object | None]] | None = None,
                 clock: Callable[[], float] = time.time,
                 stored_seq: Callable[[str], Awaitable[int]] | None = None) -> None:
        """``find(device_id)``: the device's welcomed session on this instance, or None.
        ``registered(device_id)``: its registry record (None: unknown device, refused at once).
        ``stored_seq(device_id)``: the highest seq stored for it (0: it never connected and sent a
        reading, so a command for it while it is offline is refused at once, never queued)."""
        self.bus = bus
        self.find = find
        self.registered = registered
        self.stored_seq = stored_seq
        self.clock = clock
        self.pending: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self.sent: dict[str, dict[str, Envelope]] = {}  # device -> {id: envelope} sent on its session here
        self.outcomes: dict[str, int] = {}  # commands run from this instance, by outcome (/metrics)
        bus.serve(COMMAND_REQUEST, self._serve_command)
        bus.serve(RESULT_REQUEST, self._serve_result)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    # ------------------------------------------------------------ the caller's side
    async def run(self, device_id: str, name: str, args: dict[str, Any], timeout: float,
                  queue: bool = True) -> dict[str, Any]:
        """Send command ``name`` to ``device_id`` wherever it is and return its result. ``queue``: a
        device offline now gets it if it connects within ``timeout`` (the admin API); without,
        it is refused at once with DeviceOffline (the dashboard, MQTT commands).

        Raises CommandError (``not_found``, ``command_expired``, ``command_lost``), DeviceOffline
        (``device_offline``), BusError (``bus_unavailable`` while the bus is down: fail fast),
        TooManyCommands, or TimeoutError (delivered, no result within ``timeout`` seconds)."""
        bus = self.bus
        bus.require_ok()
        if self.find(device_id) is None:
            if self.registered is not None and await self.registered(device_id) is None:
                self._count("not_found")
                raise CommandError("not_found", f"device {device_id!r} is not registered")
            if (not queue or self.stored_seq is not None) and await bus.presence.locate(device_id) is None:
                if not queue:
                    self._count("device_offline")
                    raise DeviceOffline(f"device {device_id!r} is not online; commands are refused until it "
                                        "reconnects")
                if self.stored_seq is not None and not await self.stored_seq(device_id):
                    self._count("device_offline")
                    raise DeviceOffline(f"device {device_id!r} has never connected (it has sent no reading), so "
                                        "the command is not queued for it: start the device, then send it again")
        command_id = new_command_id()
        now = self.now_ms()
        envelope: Envelope = {"id": command_id, "device": device_id, "name": name, "args": args,
                              "reply_to": bus.instance_id, "created_ms": now, "expires_ms": now + int(timeout * 1000)}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[command_id] = (device_id, future)
        started = time.monotonic()
        outcome = "ok"
        try:
            await bus.commands.put(device_id, envelope)
            delivered = await self._dispatch(device_id, envelope)
            remaining = max(0.0, timeout - (time.monotonic() - started))
            try:
                return await asyncio.wait_for(asyncio.shield(future), remaining)
            except TimeoutError:
                outcome = "timeout"
                if delivered:
                    raise TimeoutError(f"no result from device {device_id!r} within {timeout:g} s") from None
                outcome = "command_expired"
                raise CommandError("command_expired", f"device {device_id!r} was offline when the command was sent "
                                   f"and no result came within {timeout:g} s; the command expired and will not be "
                                   "delivered") from None
        except (CommandError, DeviceOffline, BusError, TooManyCommands) as err:
            outcome = err.code
            raise
        finally:
            self.pending.pop(command_id, None)
            self._count(outcome)
            if outcome in ("timeout", "command_expired"):  # the caller gave up: never deliver it later
                spawn(self._forget(device_id, command_id), "command clean-up")

    async def _dispatch(self, device_id: str, envelope: Envelope) -> bool:
        """Send the queued envelope to the device's session, here or on its holder; True if it went out."""
        conn = self.find(device_id)
        if conn is not None:
            return await self.deliver(conn, envelope)
        bus = self.bus
        try:
            holder = await bus.presence.locate(device_id)
            if holder is None or holder.instance == bus.instance_id:
                return False  # offline (or connecting here): delivered from the queue after its welcome
            reply = await bus.request(holder.instance, COMMAND_REQUEST, envelope, bus.op_timeout_s)
        except BusError as err:  # stays queued: the device gets it where it (re)connects
            log("command_not_sent", logging.WARNING, device=device_id, command=envelope["id"], error=str(err)[:200])
            return False
        return reply.get("delivered") is True

    async def _forget(self, device_id: str, command_id: str) -> None:
        with contextlib.suppress(BusError):
            if self.bus.ok:
                await self.bus.commands.done(device_id, command_id)

    async def _serve_result(self, message: dict[str, Any], sender: str) -> dict[str, Any]:
        """A result (or failure) of a command a caller of this instance waits for."""
        command_id, device_id = message.get("id"), message.get("device")
        entry = self.pending.get(command_id) if isinstance(command_id, str) else None
        if entry is None or entry[0] != device_id:
            return {"accepted": False}  # the caller stopped waiting (or a forged id)
        future = entry[1]
        if not future.done():
            error = message.get("error")
            if isinstance(error, str):
                future.set_exception(command_error(error, str(message.get("msg", error))[:300]))
            elif isinstance(message.get("result"), dict):
                future.set_result(message["result"])
        return {"accepted": True}

    def fail_waiting(self, code: str, reason: str) -> None:
        """End every wait of this instance's callers with ``reason`` (the gateway stops)."""
        for _device, future in list(self.pending.values()):
            if not future.done():
                future.set_exception(command_error(code, reason))

    # ------------------------------------------------------------ the holder's side
    async def deliver(self, conn: CommandTarget, envelope: Envelope) -> bool:
        """Send a queued command on ``conn`` (once per connection); True if it went out."""
        command_id = envelope["id"]
        if command_id in conn.session.commands:
            return True  # sent on this connection already (the queue and a request both brought it)
        self.sent.setdefault(conn.device_id, {})[command_id] = envelope
        try:
            await conn.send(conn.session.command_frame(command_id, str(envelope.get("name")),
                                                       envelope.get("args") or {}))
        except ConnectionClosed:
            return False  # its end fails or moves it
        return True

    async def _serve_command(self, message: dict[str, Any], sender: str) -> dict[str, Any]:
        device_id, command_id = message.get("device"), message.get("id")
        if not isinstance(device_id, str) or not isinstance(command_id, str):
            return {"delivered": False}
        conn = self.find(device_id)
        return {"delivered": conn is not None and await self.deliver(conn, message)}

    async def welcomed(self, conn: CommandTarget) -> None:
        """After a welcome: send the device's queued commands; fail the expired ones."""
        bus = self.bus
        if not bus.ok:
            return  # sent after the bus is back (resync)
        try:
            envelopes = await bus.commands.pending(conn.device_id)
        except BusError as err:
            log("commands_not_read", logging.WARNING, device=conn.device_id, error=str(err)[:200])
            return
        now = self.now_ms()
        for envelope in envelopes:
            expires = envelope.get("expires_ms")
            if not isinstance(envelope.get("id"), str) or not isinstance(expires, int):
                continue
            if expires <= now:
                await self._finish(conn.device_id, envelope, error=("command_expired", "the command expired "
                                                                    "before the device connected"))
            elif self.find(conn.device_id) is conn:
                await self.deliver(conn, envelope)

    def result(self, device_id: str, result: dict[str, Any]) -> None:
        """A result arrived on ``device_id``'s connection here (an EV_RESULT payload)."""
        envelope = self.sent.get(device_id, {}).pop(result["id"], None)
        if envelope is None:
            return  # not one of the commands queued for it (the core refuses those first)
        entry = self.pending.get(result["id"])
        if entry is not None and entry[0] == device_id and not entry[1].done():
            entry[1].set_result(result)  # the caller is here: answer now, acknowledge the id next
        spawn(self._finish(device_id, envelope, result=result), "command result")

    async def _finish(self, device_id: str, envelope: Envelope, result: dict[str, Any] | None = None,
                      error: tuple[str, str] | None = None) -> None:
        """Acknowledge the id (delete the queued entry), then answer the caller's instance. Only the
        instance whose delete removed the entry answers: a result is passed on at most once."""
        bus = self.bus
        command_id = envelope["id"]
        try:
            deleted = await bus.commands.done(device_id, command_id)
        except BusError as err:
            log("command_ack_failed", logging.WARNING, device=device_id, command=command_id, error=str(err)[:200])
            deleted = False
        reply_to = envelope.get("reply_to")
        if reply_to == bus.instance_id:
            entry = self.pending.get(command_id)
            if entry is not None and entry[0] == device_id and not entry[1].done():
                if error is not None:
                    entry[1].set_exception(command_error(*error))
                elif result is not None:
                    entry[1].set_result(result)
            return
        if not deleted or not isinstance(reply_to, str):
            return
        message: dict[str, Any] = {"id": command_id, "device": device_id}
        if error is not None:
            message.update(error=error[0], msg=error[1])
        else:
            message["result"] = result
        try:
            await bus.request(reply_to, RESULT_REQUEST, message, bus.op_timeout_s)
        except BusError as err:  # the caller's instance is gone or cut off: its caller saw a timeout
            log("command_result_undelivered", logging.WARNING, device=device_id, command=command_id,
                reply_to=reply_to, error=str(err)[:200])

    def ended(self, conn: CommandTarget, moved: bool) -> None:
        """The device's session here ended. Moved (a takeover, a drain): its commands stay queued for
        the next holder. Otherwise the device went offline before answering: they fail now."""
        sent = self.sent.pop(conn.device_id, {})
        if moved:
            return
        for envelope in sent.values():
            spawn(self._finish(conn.device_id, envelope, error=(
                "device_offline", f"device {conn.device_id!r} went offline before answering")), "command failure")

    async def resync(self, conns: Iterable[CommandTarget]) -> None:
        """After the bus came back: send what was queued meanwhile for the devices here, and fail the
        waits whose entries vanished (a Redis without persistence restarted) with ``command_lost``."""
        for conn in list(conns):
            await self.welcomed(conn)
        missing = []
        for command_id, (device_id, future) in list(self.pending.items()):
            with contextlib.suppress(BusError):
                if not future.done() and not await self.bus.commands.exists(device_id, command_id):
                    missing.append(future)
        if missing:
            await asyncio.sleep(LOST_GRACE_S)  # a result already on its way deleted the entry first
        for future in missing:
            if not future.done():
                future.set_exception(CommandError("command_lost", "the bus restarted and lost the queued "
                                                  "command; send it again"))
