"""A virtual protocol-v1 device: one asyncio task, driven by protocol.device.DeviceSession.

``VirtualDevice(url, device_id, credential, ...)`` samples a ``SensorModel`` at ``rate``
readings/s into a bounded in-memory outbox (protocol.outbox.MemoryOutbox), sends them in
batches over ws://.../v1/device with up to ``window`` frames in flight, and deletes them
only when the gateway acknowledges them. protocol.device.DeviceSession makes every
protocol decision: what to resend after a welcome, what a refused frame drops, slow-downs
and pacing, command arguments, and what to do after each close code (docs/protocol.md
section 11): back off, reconnect slowly, retry hourly, refresh the credential, or stop
(sampling goes on; ``set_credential()`` ends the stop). This module does the I/O: the
connection loop and what arrives on it; simulator/sending.py sends, simulator/sampling.py
samples and keeps the device clock, simulator/device_commands.py answers commands.

Counters (``DeviceCounters``), all in readings unless named otherwise:

- ``generated``: readings sampled (each got a seq).
- ``acked``: readings removed from the outbox because a cumulative ``ack`` (or a welcome's
  ``last_seq``) covered them, i.e. the gateway confirmed they are durably stored.
- ``rejected``: readings in frames the gateway refused as invalid (not resent).
- ``dropped``: readings evicted from the full outbox (oldest first) before being acked.
- Invariant: ``generated == acked + rejected + dropped + buffered``.
- ``sent_frames`` / ``sent_readings``: data frames and the readings in them, resends included;
  ``resent``: readings sent again (after a reconnect or a slow-down).
- ``reconnects``: connections opened after the first; ``slowed``: slow frames obeyed;
  ``commands``: commands answered; ``malformed``: malformed frames sent (fault mode);
  ``sensor_errors``: failed sensor reads; ``errors``: gateway error codes from error frames
  and HTTP refusals, plus ``close_<code>`` per close code other than 1000 (1006: aborted),
  ``connect_failed`` and ``protocol`` (a frame from the gateway the session could not read).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from protocol import wire
from protocol.device import (
    D_ACK,
    D_CLOSING,
    D_COMMAND,
    D_DROP,
    D_INVALID,
    D_NOTE,
    D_RESEND,
    D_SLOW,
    D_WELCOME,
    ENC_CBOR,
    ENC_JSON,
    R_REFRESH,
    R_STOP,
    Backoff,
    DeviceSession,
    Reconnect,
)
from protocol.outbox import MemoryOutbox
from simulator.device_base import DeviceCounters
from simulator.device_commands import OUTPUTS, Commands
from simulator.errors import SimConfigError
from simulator.faults import FaultPlan, mint_jwt
from simulator.sampling import Sampling
from simulator.sending import Sending
from simulator.sensors import SensorModel, make_sensor

__all__ = ["CredentialRefresh", "DeviceCounters", "VirtualDevice", "is_jwt"]

_ERROR_FOR_CLOSE = {code: error for error, code in wire.CLOSE_FOR_ERROR.items()}

CredentialRefresh = Callable[[str], Awaitable[str | None]]


def _device_url(url: str) -> str:
    return url if url.rstrip("/").endswith("/v1/device") else url.rstrip("/") + "/v1/device"


def is_jwt(credential: str) -> bool:
    """The one token-vs-JWT test (protocol.wire.is_device_token), as the simulator asks it."""
    return not wire.is_device_token(credential)


class _Reboot(Exception):
    """Internal: the device was told to reboot; the connection is closed, then reopened."""



class VirtualDevice(Sending, Sampling, Commands):
    """A simulated device (see the module docstring).

    ``credential`` is a device token (``ewt_...``) or a JWT; ``auth`` is ``"header"``
    (Authorization: Bearer) or ``"frame"`` (first-frame auth). ``credential_refresh`` is
    awaited with the device id when the credential expired and returns a new credential
    (None: stop). ``first_seq``: the persisted seq counter to continue from; None means the
    counter was lost, so at the first welcome the device renumbers its unsent readings from
    ``last_seq + 1`` (docs/protocol.md section 3). A device the gateway stopped (see
    ``stopped_reason``) keeps sampling and reconnects after ``set_credential()``. ``run()``
    returns after ``stop_generating()`` (or ``duration_s``) once the outbox is empty, or at
    once if the device is stopped; cancel the task for a hard stop. ``batch`` is how many
    readings a frame gathers (a partial one goes after ``linger_s``); with ``adaptive_batch``
    the session's batch cap is the protocol's max_batch, so after a slow-down frames grow
    (protocol.device's batch-size rule, docs/protocol.md section 4).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        device_id: str,
        credential: str,
        *,
        rate: float = 1.0,
        batch: int = 1,
        window: int = 4,
        outbox_max: int = 1000,
        auth: str = "header",
        sensor: SensorModel | None = None,
        faults: FaultPlan | None = None,
        fault_index: int = 0,
        seed: int | None = None,
        linger_s: float = 1.0,
        status_interval_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        credential_refresh: CredentialRefresh | None = None,
        first_seq: int | None = None,
        clock_sync: bool = False,
        compression: bool = False,
        encoding: str = ENC_JSON,
        open_timeout_s: float = 10.0,
        reboot_delay_s: float = 1.0,
        adaptive_batch: bool = True,
    ) -> None:
        if rate <= 0 or batch < 1 or window < 1 or outbox_max < 1:
            raise SimConfigError("rate must be > 0 and batch, window, outbox_max >= 1")
        if auth not in ("header", "frame"):
            raise SimConfigError(f"auth must be 'header' or 'frame', not {auth!r}")
        if encoding not in (ENC_JSON, ENC_CBOR):
            raise SimConfigError(f"encoding must be {ENC_JSON!r} or {ENC_CBOR!r}, not {encoding!r}")
        # Several gateway instances (docs/scaling.md): one is picked at random at each connection.
        self.urls = [_device_url(u) for u in ([url] if isinstance(url, str) else url)]
        if not self.urls:
            raise SimConfigError("give at least one gateway URL")
        self.url = self.urls[0]
        self.device_id = device_id
        self.rate = rate
        self.batch = batch
        self.outbox_max = outbox_max
        self.auth = auth
        self.linger_s = linger_s
        self.status_interval_s = status_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.credential_refresh = credential_refresh
        self.clock_sync = clock_sync
        self.compression = compression
        self.open_timeout_s = open_timeout_s
        self.reboot_delay_s = reboot_delay_s
        self.rng = random.Random(seed if seed is not None else zlib.crc32(device_id.encode()))
        self.sensor = sensor if sensor is not None else make_sensor("climate", self.rng)
        self.faults = None
        if faults is not None and faults.applies_to(fault_index):
            self.faults = faults.injector(fault_index)
            if faults.jwt_secret and faults.jwt_ttl_s > 0:
                credential = mint_jwt(faults.jwt_secret, device_id, faults.jwt_ttl_s)
                if credential_refresh is None:
                    self.credential_refresh = self._mint_refresh
        self.credential = credential
        self.counters = DeviceCounters()
        self.outbox = MemoryOutbox(first_seq, outbox_max)
        self.session = DeviceSession(
            device_id, None if is_jwt(credential) else credential, credential if is_jwt(credential) else None,
            None, batch, window, outbox=self.outbox,
            backoff=Backoff(backoff_initial_s * 1000, backoff_max_s * 1000, rand=self.rng.random),
            handlers=self.command_handlers(), encoding=encoding,
            batch_cap=max(batch, wire.MAX_BATCH) if adaptive_batch else batch)
        self.interval_s = 1.0 / rate
        self.thresholds = {}  # metric -> (low, high)
        self.outputs = dict.fromkeys(OUTPUTS, False)
        self.state = "idle"  # idle, connecting, online, backoff, slow, hourly, stopped
        self.stopped_reason: str | None = None
        self.reboot_pending = False
        self._stop_reason: str | None = None
        self._fault_dropped = False  # this connection was aborted by the fault plan: its 1006 is no error
        self.boot = ""
        self._max_sent_seq = self.outbox.next_seq - 1
        self._generating = True
        self._loop_t0 = 0.0
        self._boot_at = 0.0
        self._next_sample_at = 0.0
        self._clock_extra_s = 0.0  # correction from the welcome's time (clock_sync)
        self._connected_once = False
        self._waiter: asyncio.Timeout | None = None
        self._ws: ClientConnection | None = None
        self._new_boot(time.monotonic())

    # ------------------------------------------------------------ public
    @property
    def buffered(self) -> int:
        """Readings in the outbox (not yet acknowledged)."""
        return self.outbox.count

    @property
    def online(self) -> bool:
        return self.state == "online"

    def stop_generating(self) -> None:
        """Stop sampling; ``run()`` returns once every buffered reading is acked (or rejected)."""
        self._generating = False
        self._wake()

    def set_credential(self, credential: str) -> None:
        """A new token or JWT (the operator rotated it): ends a stop, reconnects soon."""
        self.credential = credential
        jwt = is_jwt(credential)
        self.session.set_credential(None if jwt else credential, credential if jwt else None)
        self.stopped_reason = None
        self._wake()

    def abort_connection(self) -> bool:
        """Abort the TCP connection now (no close frame), as a network drop would. True if one was open."""
        ws = self._ws
        if ws is None or ws.transport is None:
            return False
        ws.transport.abort()
        return True

    async def run(self, duration_s: float | None = None) -> DeviceCounters:
        """Run until finished (see the class docstring); ``duration_s`` limits the sampling time."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._loop_t0 = now
        self._boot_at = now  # uptime counts from the start of the run (boot id chosen at construction)
        self._next_sample_at = now
        gen_until = now + duration_s if duration_s is not None else math.inf
        try:
            while not self._finished():
                if self.session.stopped:
                    self.state = "stopped"
                    await self._idle_until(math.inf, gen_until)
                    continue
                decision: Reconnect | None = None
                try:
                    await self._connection(gen_until)
                except _Reboot:
                    await self._idle_until(loop.time() + self.reboot_delay_s, gen_until)
                    self._new_boot(loop.time())
                    continue
                except ConnectionClosed as exc:
                    decision = self._on_closed(exc)
                except InvalidStatus as exc:
                    decision = self._on_refused(exc)
                except (OSError, InvalidHandshake, TimeoutError):
                    self.counters.count_error("connect_failed")
                    decision = self.session.failed(self._ms(loop.time()))
                finally:
                    self._ws = None
                    self.session.connection_lost()
                if decision is None:  # the device closed (done, or its reboot)
                    continue
                if decision.action == R_REFRESH:
                    decision = await self._refresh_credential()
                self.state = decision.action
                if decision.action == R_STOP:
                    self.stopped_reason = self._stop_reason or decision.reason
                    continue
                await self._idle_until(loop.time() + decision.delay_ms / 1000.0, gen_until)
        finally:
            self.state = "stopped" if self.session.stopped else "done"
        return self.counters

    # ------------------------------------------------------------ connection
    async def _connection(self, gen_until: float) -> None:
        loop = asyncio.get_running_loop()
        self.state = "connecting"
        self._stop_reason = None
        self._fault_dropped = False
        headers = {"Authorization": "Bearer " + self.credential} if self.auth == "header" else None
        if len(self.urls) > 1:
            self.url = self.rng.choice(self.urls)
        async with connect(
            self.url, additional_headers=headers, proxy=None,
            compression="deflate" if self.compression else None,
            subprotocols=[Subprotocol(name) for name in self.session.subprotocols()] or None,
            open_timeout=self.open_timeout_s, ping_interval=None, close_timeout=2,
            max_size=1 << 20, user_agent_header="edgewire-simulator",
        ) as ws:
            self._ws = ws
            self.session.negotiated(ws.subprotocol)
            if self._connected_once:
                self.counters.reconnects += 1
            self._connected_once = True
            if self.faults is not None:
                self.faults.schedule_drop(loop.time())
            if self.auth == "frame":
                first = self.session.auth_frame()
                if first is not None:
                    await ws.send(first)
            next_status = math.inf
            while True:
                now = loop.time()
                self._generate_due(now, gen_until)
                if self.faults is not None and now >= self.faults.next_drop_at:
                    self.counters.count_error("fault_drop")
                    self.faults.next_drop_at = math.inf
                    self._fault_dropped = True
                    self.abort_connection()
                if not self._generating and not self.outbox.count:
                    await ws.close(wire.CLOSE_NORMAL, "done")
                    return
                if self.session.online:
                    if next_status == math.inf:
                        next_status = now
                    if now >= next_status:
                        await self._send(ws, self.session.status_frame(self._status_fields(now)))
                        self.counters.status_sent += 1
                        next_status = now + self.status_interval_s
                    await self._send_ready(ws, now)
                deadline = min(self._deadline(now, gen_until), next_status)
                if self.faults is not None:
                    deadline = min(deadline, self.faults.next_drop_at)
                try:
                    async with asyncio.timeout_at(None if deadline == math.inf else deadline) as waiter:
                        self._waiter = waiter
                        text = await ws.recv()
                except TimeoutError:
                    continue
                finally:
                    self._waiter = None
                await self._handle(ws, text, loop.time())
                if self.reboot_pending:
                    self.reboot_pending = False
                    await ws.close(wire.CLOSE_GOING_AWAY, "rebooting")
                    raise _Reboot()

    # ------------------------------------------------------------ incoming
    async def _handle(self, ws: ClientConnection, text: str | bytes, now: float) -> None:
        d = self.session.handle(text, self._ms(now))
        kind = d.kind
        if kind == D_WELCOME:
            self._on_welcome(d.seq, d.renumber, now)
        elif kind == D_SLOW:
            self.counters.slowed += 1
        elif kind == D_COMMAND:
            self.counters.commands += 1
            if d.reply is not None:
                await self._send(ws, d.reply)
        elif kind in (D_DROP, D_RESEND, D_NOTE, D_CLOSING):
            self.counters.count_error(str(d.code))
        elif kind == D_INVALID:
            self.counters.count_error("bad_command" if d.name is not None else "protocol")
        if kind in (D_ACK, D_WELCOME, D_DROP):
            self._sync_counts()

    def _on_welcome(self, last_seq: int, renumber: int, now: float) -> None:
        self.state = "online"
        if renumber:
            self._max_sent_seq = last_seq  # renumbered: nothing above last_seq was sent yet
        if self.clock_sync:
            welcome = self.session.welcome or {}
            gw_time = welcome.get("time")
            if type(gw_time) is int:  # set the device clock to the gateway's (skew cancelled)
                self._clock_extra_s += gw_time / 1000.0 - self.device_time(now)

    # ------------------------------------------------------------ closes and refusals
    def _on_closed(self, exc: ConnectionClosed) -> Reconnect:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code != wire.CLOSE_NORMAL and not (code is None and self._fault_dropped):  # a drop counts once
            self.counters.count_error(f"close_{code or 1006}")
        decision = self.session.closed(code, self._ms(asyncio.get_running_loop().time()))
        self._stop_reason = _ERROR_FOR_CLOSE.get(decision.code, f"close_{decision.code}")
        return decision

    def _on_refused(self, exc: InvalidStatus) -> Reconnect:
        status = exc.response.status_code
        decision = self.session.refused(status, exc.response.body, self._ms(self._time()))
        self.counters.count_error(decision.error or f"http_{status}")
        self._stop_reason = decision.error or f"http_{status}"
        return decision

    async def _refresh_credential(self) -> Reconnect:
        """The credential expired: ask the hook for a new one; the session decides what follows."""
        fresh: str | None = None
        if self.credential_refresh is not None:
            try:
                fresh = await self.credential_refresh(self.device_id)
            except Exception:  # a broken hook stops this device, not the fleet
                self.counters.count_error("refresh_failed")
        now_ms = self._ms(asyncio.get_running_loop().time())
        self._stop_reason = wire.E_EXPIRED
        if fresh is None:
            return self.session.refreshed(None, None, now_ms)
        decision = self.session.refreshed(None if is_jwt(fresh) else fresh, fresh if is_jwt(fresh) else None,
                                          now_ms)
        if decision.action != R_STOP:
            self.credential = fresh
        return decision

    async def _mint_refresh(self, device_id: str) -> str | None:
        plan = self.faults.plan if self.faults is not None else None
        if plan is None or not plan.jwt_secret:
            return None
        return mint_jwt(plan.jwt_secret, device_id, plan.jwt_ttl_s)

    # ------------------------------------------------------------ time, sampling, waiting
    def _finished(self) -> bool:
        return not self._generating and (not self.outbox.count or self.session.stopped)

    async def _idle_until(self, until: float, gen_until: float) -> None:
        """Wait (sampling on schedule) until ``until`` or an early wake-up (set_credential, stop)."""
        loop = asyncio.get_running_loop()
        stopped = self.session.stopped
        while not self._finished():
            now = loop.time()
            self._generate_due(now, gen_until)
            if now >= until or (stopped and not self.session.stopped) or self._finished():
                return
            wake = min(until, self._next_sample_at if self._generating else until)
            try:
                async with asyncio.timeout_at(None if wake == math.inf else max(wake, now)) as waiter:
                    self._waiter = waiter
                    await asyncio.Future()
            except TimeoutError:
                pass
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.expired():
            waiter.reschedule(asyncio.get_running_loop().time())
