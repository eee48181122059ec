"""The agent's uplink: one WebSocket connection at a time to the gateway, driven by DeviceSession.

protocol.device.DeviceSession decides everything the protocol fixes (what to send, what
each frame means, what to do after each close code, command arguments); this module does
the I/O: connect with the credential, send frames, wait as told, and, when told to stop,
wait until the credential changes (agent.token_file or the config file is edited). The
host (edge.agent.Agent) gets called back when the uplink goes online or offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.http11 import Response
from websockets.typing import Subprotocol

from edge import __version__
from edge.config import AgentConfig, load
from edge.errors import ConfigError, QueueError
from edge.ota_agent import PiUpdates
from protocol import wire
from protocol.device import (
    D_ACK,
    D_CLOSING,
    D_COMMAND,
    D_DROP,
    D_INVALID,
    D_NOTE,
    D_OTA_CHUNK,
    D_RESEND,
    D_SLOW,
    D_WELCOME,
    R_BACKOFF,
    R_REFRESH,
    R_STOP,
    Decision,
    DeviceSession,
    Reconnect,
)

LOG = logging.getLogger("edgewire.edge.uplink")


def now_ms() -> int:
    return int(time.monotonic() * 1000)


class CredentialSource:
    """Where the agent's credential comes from: ``agent.token_file``, or the config file itself.

    ``read()`` returns what is configured now (the file is re-read), so an operator who
    rotates the token (or a tool that renews a JWT in the token file) needs no restart.
    """

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.problem = ""

    def read(self) -> str | None:
        cfg = self.cfg
        try:
            if cfg.path:
                return load(cfg.path).token
            if cfg.token_file:
                return Path(cfg.token_file).read_text().strip() or None
        except (ConfigError, OSError) as err:
            if str(err) != self.problem:
                self.problem = str(err)
                LOG.error("cannot read the credential: %s", err)
            return None
        return cfg.token

    def changed(self, old: str | None) -> str | None:
        """The credential configured now, if it differs from ``old``."""
        fresh = self.read()
        return fresh if fresh and fresh != old else None


class UplinkHost(Protocol):
    """What the uplink needs from the agent."""

    def went_online(self, decision: Decision) -> None: ...
    def went_offline(self) -> None: ...
    def outbox_changed(self) -> None: ...
    def status_fields(self) -> dict[str, Any]: ...
    def reboot(self) -> None: ...


class Uplink:
    """Connect, send, receive; after each connection do what the session's Reconnect says."""

    credential_poll_s = 5.0  # how often a stopped uplink looks for a new credential

    def __init__(self, cfg: AgentConfig, session: DeviceSession, credentials: CredentialSource,
                 host: UplinkHost, uptime_ms: Callable[[], int]) -> None:
        self.cfg = cfg
        self.session = session
        self.credentials = credentials
        self.host = host
        self.uptime_ms = uptime_ms
        self.state = "connecting"  # connecting, online, backoff, slow, hourly, stopped
        self.reason = ""  # the last reconnect decision, for status.json
        self.ws: ClientConnection | None = None
        self.kick = asyncio.Event()
        self.reported: tuple[int, int] = (-1, -1)  # (dropped, rejected) last sent in a status frame
        self.acks = 0  # acks since the agent started (the updater's health check waits for the first)
        self.updates: PiUpdates | None = None  # over-the-air updates (edge/ota_agent.py), when enabled

    @property
    def connected(self) -> bool:
        return self.state == "online"

    async def run(self, stopping: asyncio.Event) -> None:
        session = self.session
        while not stopping.is_set():
            self.state = "connecting"
            decision = await self.attempt()
            if stopping.is_set():
                break
            if decision.action == R_REFRESH:
                LOG.warning("%s", decision.reason)
                decision = session.refreshed(token=self.credentials.changed(session.credential), now_ms=now_ms())
            self.note(decision)
            if decision.action == R_STOP:
                fresh = await self.wait_for_credential(stopping)
                if fresh is None:
                    break
                session.set_credential(token=fresh)
                LOG.info("the credential changed: connecting again")
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), max(0, decision.at_ms - now_ms()) / 1000)

    def note(self, decision: Reconnect) -> None:
        self.state = "stopped" if decision.action == R_STOP else decision.action
        self.reason = decision.reason
        if decision.action == R_STOP:
            LOG.error("%s; give the agent a valid token (agent.token or agent.token_file) and it reconnects",
                      decision.reason)
        elif decision.action == R_BACKOFF:
            LOG.info("%s", decision.reason)
        else:
            LOG.warning("%s", decision.reason)

    async def wait_for_credential(self, stopping: asyncio.Event) -> str | None:
        """Sampling goes on; return the new credential once it changes (None: the agent stops)."""
        old = self.session.credential
        while not stopping.is_set():
            fresh = self.credentials.changed(old)
            if fresh is not None:
                return fresh
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.credential_poll_s)
        return None

    async def attempt(self) -> Reconnect:
        """One connection, from the upgrade to its end; what to do next."""
        session = self.session
        try:
            async with connect(
                self.cfg.gateway,
                additional_headers={"Authorization": f"Bearer {session.credential}"},
                open_timeout=self.cfg.connect_timeout,
                ping_interval=self.cfg.ping_interval,
                ping_timeout=self.cfg.ping_interval,
                compression="deflate" if self.cfg.compression else None,
                subprotocols=[Subprotocol(name) for name in session.subprotocols()] or None,
                max_size=1 << 20,
                user_agent_header=f"edgewire-agent/{__version__}",
            ) as ws:
                self.ws = ws
                session.negotiated(ws.subprotocol)
                await self.converse(ws)
            rcvd = ws.protocol.close_rcvd
            return session.closed(rcvd.code if rcvd else None, now_ms())
        except InvalidStatus as err:
            return self.refused(err.response)
        except ConnectionClosed as err:
            return session.closed(err.rcvd.code if err.rcvd else None, now_ms())
        except QueueError:
            raise  # the disk, not the network: let systemd restart us and the log say why
        except (OSError, InvalidHandshake, TimeoutError, wire.ProtocolError) as err:
            LOG.warning("gateway unreachable: %s", err or type(err).__name__)
            return session.failed(now_ms())
        finally:
            self.ws = None
            if self.state == "online":
                LOG.info("offline; readings are kept in %s", self.cfg.queue_path)
            self.state = "connecting"
            self.host.went_offline()

    def refused(self, response: Response) -> Reconnect:
        """The gateway refused the upgrade: the session reads the status and the body."""
        return self.session.refused(response.status_code, response.body, now_ms())

    async def converse(self, ws: ClientConnection) -> None:
        """Frames until the connection closes (ConnectionClosed, or a clean end of iteration)."""
        first = await asyncio.wait_for(ws.recv(), self.cfg.connect_timeout)
        decision = await self.on_frame(ws, first)
        if decision.kind not in (D_WELCOME, D_CLOSING):
            raise wire.ProtocolError(wire.E_BAD_FRAME, f"expected a welcome, got {decision.kind}")
        sender = asyncio.create_task(self.sender(ws))
        receiver = asyncio.create_task(self.receiver(ws))
        try:
            # whichever ends first ends the connection; its exception (ConnectionClosed, QueueError) surfaces
            done, _ = await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (sender, receiver):
                task.cancel()
            for task in (sender, receiver):
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task

    async def receiver(self, ws: ClientConnection) -> None:
        async for message in ws:
            await self.on_frame(ws, message)

    async def on_frame(self, ws: ClientConnection, text: str | bytes) -> Decision:
        decision = self.session.handle(text, now_ms())
        kind = decision.kind
        if kind == D_WELCOME:
            self.state = "online"
            if decision.renumber:
                LOG.warning("the gateway already holds seqs up to %d that this agent never sent (the queue "
                            "was new or wiped): the buffered readings now continue from %d", decision.seq,
                            decision.seq + 1)
            self.host.went_online(decision)
            await ws.send(self.session.status_frame(self.host.status_fields()))
            self.reported = self.counts()
        elif kind == D_COMMAND:
            if decision.reply is not None:
                await ws.send(decision.reply)
            LOG.info("command %s: %s", decision.name, decision.message)
            if decision.name == "reboot" and decision.ok:
                self.host.reboot()
            if decision.name == "ota" and self.updates is not None:
                self.updates.poll()  # a new download: empty its directory, then the first ota_get
        elif kind == D_OTA_CHUNK:
            if self.updates is not None and decision.data is not None:
                self.updates.write(str(decision.name), decision.seq, decision.data)
        elif kind == D_DROP:
            LOG.error("gateway refused readings %d-%d (%s: %s); dropped %d", decision.seq, decision.last,
                      decision.code, decision.message, decision.count)
        elif kind == D_RESEND:
            LOG.warning("gateway did not store seq %d (%s); resending", decision.seq, decision.code)
        elif kind == D_SLOW:
            LOG.info("gateway asks to slow down: %.3g frames/s, next frame in %d ms", self.session.rate,
                     decision.wait_ms)
        elif kind == D_CLOSING:
            LOG.warning("gateway is closing the connection: %s %s", decision.code, decision.message)
        elif kind == D_NOTE:
            LOG.warning("gateway error %s: %s", decision.code, decision.message)
        elif kind == D_INVALID:
            LOG.warning("%s (%s)", decision.message, decision.code)
        if kind == D_ACK:
            self.acks += 1
        if kind in (D_ACK, D_DROP):
            self.host.outbox_changed()
        if kind in (D_ACK, D_DROP, D_RESEND, D_SLOW, D_WELCOME, D_COMMAND, D_OTA_CHUNK):
            self.kick.set()  # the window or the pacing changed: the sender may have more to send
        return decision

    def counts(self) -> tuple[int, int]:
        fields = self.host.status_fields()
        return int(fields.get("dropped", 0)), int(fields.get("rejected", 0))

    async def sender(self, ws: ClientConnection) -> None:
        session = self.session
        last_status = time.monotonic()
        while True:
            if self.updates is not None:
                self.updates.poll()
            update_frame = session.ota_frame()
            if update_frame is not None:
                await ws.send(update_frame)
                continue
            now = now_ms()
            frame = session.next_frame(up=self.uptime_ms(), now_ms=now) if session.can_send() else None
            if frame is not None:
                await ws.send(frame)
                continue
            counts = self.counts()
            if counts != self.reported or time.monotonic() - last_status >= self.cfg.status_interval:
                await ws.send(session.status_frame(self.host.status_fields()))
                self.reported = counts
                last_status = time.monotonic()
            wait = session.send_wait_ms(now_ms()) / 1000
            self.kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), wait if wait > 0 else self.cfg.status_interval)

    async def close(self) -> None:
        """Say goodbye (the agent is stopping)."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(wire.CLOSE_GOING_AWAY, "agent stopping"), 2)

