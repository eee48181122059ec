"""A virtual protocol-v1 device: one asyncio task, driven by protocol.device.DeviceSession.

``VirtualDevice(url, device_id, credential, ...)`` samples a ``SensorModel`` at ``rate``
readings/s into a bounded in-memory outbox, sends them in batches over ws://.../v1/device
with up to ``window`` frames in flight, and deletes them only when the gateway acknowledges
them. After a reconnect, DeviceSession resends everything above the welcome's
``last_seq``. It obeys ``slow`` frames, answers commands, sends ``status`` and follows the
close-code table of docs/protocol.md section 11.

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
  ``connect_failed`` and ``protocol`` (a frame from the gateway that core could not read).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from protocol import wire
from protocol.device import DEV_ACK, DEV_CMD, DEV_ERROR, DEV_SLOW, DEV_WELCOME, DeviceSession
from simulator.errors import SensorReadError, SimConfigError
from simulator.faults import FaultInjector, FaultPlan, mint_jwt
from simulator.sensors import SensorModel, make_sensor

FIRMWARE = "sim-0.1.0"
OUTPUTS = ("led", "relay", "buzzer")

# Close codes after which the device stops (docs/protocol.md section 11).
STOP_CODES = {
    wire.CLOSE_AUTH_FAILED: "auth_failed",
    wire.CLOSE_DISABLED: "device_disabled",
    wire.CLOSE_REPLACED: "replaced",
    wire.CLOSE_ADDRESS: "address_not_allowed",
    wire.CLOSE_IDENTITY: "identity_mismatch",
}
# HTTP refusal codes (JSON body) after which the device stops.
STOP_HTTP_CODES = (wire.E_AUTH_FAILED, wire.E_DISABLED, wire.E_ADDRESS)

CredentialRefresh = Callable[[str], Awaitable[str | None]]


@dataclass(slots=True)
class DeviceCounters:
    """What one device did; see the module docstring for each field's meaning."""

    generated: int = 0
    sent_frames: int = 0
    sent_readings: int = 0
    acked: int = 0
    resent: int = 0
    rejected: int = 0
    dropped: int = 0
    reconnects: int = 0
    slowed: int = 0
    commands: int = 0
    malformed: int = 0
    sensor_errors: int = 0
    status_sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Reboot(Exception):
    """Internal: the device was told to reboot; the connection is closed, then reopened."""


class VirtualDevice:
    """A simulated device (see the module docstring).

    ``credential`` is a device token (``ewt_...``) or a JWT; ``auth`` is ``"header"``
    (Authorization: Bearer) or ``"frame"`` (first-frame auth). ``credential_refresh`` is
    awaited with the device id after 4004/credential_expired and returns a new credential
    (None: stop). ``first_seq``: the persisted seq counter to continue from; None means the
    counter was lost, so at the first welcome the device renumbers its unsent readings from
    ``last_seq + 1`` (docs/protocol.md section 3). ``run()`` returns when the device was
    stopped by the gateway (see ``stopped_reason``), or after ``stop_generating()`` once the
    outbox is empty; cancel the task for a hard stop.
    """

    def __init__(
        self,
        url: str,
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
        open_timeout_s: float = 10.0,
        reboot_delay_s: float = 1.0,
        adaptive_batch: bool = True,
    ) -> None:
        if rate <= 0 or batch < 1 or window < 1 or outbox_max < 1:
            raise SimConfigError("rate must be > 0 and batch, window, outbox_max >= 1")
        if auth not in ("header", "frame"):
            raise SimConfigError(f"auth must be 'header' or 'frame', not {auth!r}")
        self.url = url if url.rstrip("/").endswith("/v1/device") else url.rstrip("/") + "/v1/device"
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
        self.adaptive_batch = adaptive_batch
        self.rng = random.Random(seed if seed is not None else zlib.crc32(device_id.encode()))
        self.sensor = sensor if sensor is not None else make_sensor("climate", self.rng)
        self.faults: FaultInjector | None = None
        if faults is not None and faults.applies_to(fault_index):
            self.faults = faults.injector(fault_index)
            if faults.jwt_secret and faults.jwt_ttl_s > 0:
                credential = mint_jwt(faults.jwt_secret, device_id, faults.jwt_ttl_s)
                if credential_refresh is None:
                    self.credential_refresh = self._mint_refresh
        self.credential = credential
        self._window = window
        self._expired = False
        self.counters = DeviceCounters()
        self.outbox: deque[Any] = deque()  # wire.Reading, ascending seq
        self.session: DeviceSession = self._new_session()
        self.thresholds: dict[str, tuple[float, float]] = {}
        self.outputs: dict[str, bool] = dict.fromkeys(OUTPUTS, False)
        self.state = "idle"  # idle, connecting, online, backoff, stopped
        self.stopped_reason: str | None = None
        self.boot = ""
        self._next_seq = first_seq if first_seq is not None else 1
        self._synced = first_seq is not None
        self._max_sent_seq = self._next_seq - 1
        self._frames: dict[int, int] = {}  # first seq -> last seq of frames in flight
        self._generating = True
        self._loop_t0 = 0.0
        self._boot_at = 0.0
        self._next_sample_at = 0.0
        self._next_send_at = 0.0
        self._pace_s = 0.0  # min seconds between frames after a slow-down
        self._clock_extra_s = 0.0  # correction from the welcome's time (clock_sync)
        self._attempt = 0
        self._connected_once = False
        self._reboot_pending = False
        self._waiter: asyncio.Timeout | None = None
        self._ws: ClientConnection | None = None

    # ------------------------------------------------------------ public
    @property
    def buffered(self) -> int:
        """Readings in the outbox (not yet acknowledged)."""
        return len(self.outbox)

    @property
    def online(self) -> bool:
        return self.state == "online"

    def stop_generating(self) -> None:
        """Stop sampling; ``run()`` returns once every buffered reading is acked (or rejected)."""
        self._generating = False
        self._wake()

    def abort_connection(self) -> bool:
        """Abort the TCP connection now (no close frame), as a network drop would. True if one was open."""
        ws = self._ws
        if ws is None or ws.transport is None:
            return False
        ws.transport.abort()
        return True

    async def run(self, duration_s: float | None = None) -> DeviceCounters:
        """Run until stopped (see the class docstring); ``duration_s`` limits the sampling time."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._loop_t0 = now
        self._new_boot(now)
        self._next_sample_at = now
        gen_until = now + duration_s if duration_s is not None else math.inf
        try:
            while not self._finished():
                try:
                    await self._connection(gen_until)
                except _Reboot:
                    await self._idle_until(loop.time() + self.reboot_delay_s, gen_until)
                    self._new_boot(loop.time())
                    continue
                except ConnectionClosed as exc:
                    self._on_closed(exc)
                except InvalidStatus as exc:
                    await self._on_refused(exc)
                except (OSError, InvalidHandshake, TimeoutError):
                    self.counters.count_error("connect_failed")
                finally:
                    self._ws = None
                    self.session.connection_lost()
                    self._frames.clear()
                if self._finished():
                    break
                self.state = "backoff"
                await self._idle_until(loop.time() + self._backoff_delay(), gen_until)
        finally:
            self.state = "stopped"
        return self.counters

    # ------------------------------------------------------------ connection
    async def _connection(self, gen_until: float) -> None:
        loop = asyncio.get_running_loop()
        self.state = "connecting"
        headers = {"Authorization": "Bearer " + self.credential} if self.auth == "header" else None
        async with connect(
            self.url, additional_headers=headers, proxy=None,
            compression="deflate" if self.compression else None,
            open_timeout=self.open_timeout_s, ping_interval=None, close_timeout=2,
            max_size=1 << 20, user_agent_header="edgewire-simulator",
        ) as ws:
            self._ws = ws
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
                    self.abort_connection()
                if not self._generating and not self.outbox:
                    await ws.close(1000, "done")
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
                if self._reboot_pending:
                    self._reboot_pending = False
                    await ws.close(1001, "rebooting")
                    raise _Reboot()

    async def _send(self, ws: ClientConnection, frame: str | bytes) -> None:
        if self.faults is not None:
            delay = self.faults.send_delay()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(frame)

    def _unsent_index(self) -> int:
        """Index in the outbox of the first reading not sent on this connection."""
        sent = self.session.sent
        index = 0
        for item in self.outbox:
            if item.seq > sent:
                break
            index += 1
        return index

    async def _send_ready(self, ws: ClientConnection, now: float) -> None:
        """Send data frames while the window, pacing and batching allow."""
        session = self.session
        while session.can_send() and now >= self._next_send_at:
            index = self._unsent_index()
            unsent = len(self.outbox) - index
            if unsent == 0:
                return
            if unsent < self.batch and self._generating and now < self._linger_deadline(index):
                return
            session.max_batch = self._batch_limit()
            first = self.outbox[index].seq
            frame = session.next_frame(itertools.islice(self.outbox, index, None), self._uptime_ms(now))
            if frame is None:
                return
            last = session.sent
            self._frames[first] = last
            count = last - first + 1
            self.counters.sent_frames += 1
            self.counters.sent_readings += count
            if first <= self._max_sent_seq:
                self.counters.resent += min(count, self._max_sent_seq - first + 1)
            self._max_sent_seq = max(self._max_sent_seq, last)
            if self._pace_s > 0:
                self._next_send_at = now + self._pace_s
            await self._send(ws, frame)
            if self.faults is not None and self.faults.want_malformed():
                max_frame = (session.welcome or {}).get("max_frame", wire.MAX_FRAME_BYTES)
                _kind, bad = self.faults.malformed_frame(max_frame if type(max_frame) is int else 16384)
                self.counters.malformed += 1
                await self._send(ws, bad)

    def _batch_limit(self) -> int:
        """``batch``, or after a slow-down (adaptive_batch) the gateway's max_batch, so a paced
        device still moves its backlog: fewer, fuller frames at the allowed frame rate."""
        limit = self.batch
        welcome = self.session.welcome or {}
        announced = welcome.get("max_batch")
        gateway_max = announced if type(announced) is int and announced > 0 else wire.MAX_BATCH
        if self.adaptive_batch and self._pace_s > 0:
            limit = max(limit, gateway_max)
        return min(limit, gateway_max)

    def _linger_deadline(self, index: int) -> float:
        """When a partial batch starting at ``outbox[index]`` is due (its oldest reading aged linger_s)."""
        up = self.outbox[index].up
        if up is None:
            return 0.0
        taken_at: float = self._boot_at + up / 1000.0
        if taken_at > asyncio.get_running_loop().time():
            return 0.0  # read before a reboot (uptime from the previous boot): long overdue
        return taken_at + self.linger_s

    def _deadline(self, now: float, gen_until: float) -> float:
        """The next moment the loop has something to do without a frame arriving."""
        deadline = self._next_sample_at if self._generating and self._next_sample_at < gen_until else math.inf
        if self.session.can_send():
            index = self._unsent_index()
            unsent = len(self.outbox) - index
            if unsent:
                due = self._next_send_at
                if unsent < self.batch and self._generating:
                    due = max(due, self._linger_deadline(index))
                deadline = min(deadline, max(due, now))
        return deadline

    # ------------------------------------------------------------ incoming
    async def _handle(self, ws: ClientConnection, text: str | bytes, now: float) -> None:
        if not isinstance(text, str):
            self.counters.count_error("protocol")
            return
        try:
            kind, payload = self.session.receive(text)
        except wire.ProtocolError:
            self.counters.count_error("protocol")
            return
        if kind == DEV_ACK:
            self._release_acked()
        elif kind == DEV_WELCOME:
            self._on_welcome(payload, now)
        elif kind == DEV_SLOW:
            self.counters.slowed += 1
            # 5% under the announced rate so network jitter does not push frames over the limit
            self._pace_s = 1.05 / max(self.session.rate, 1e-3)
            self._next_send_at = now + self.session.send_after_ms / 1000.0
            seq = payload.get("seq")
            if type(seq) is int:
                for first in [f for f in self._frames if f >= seq]:
                    del self._frames[first]
        elif kind == DEV_ERROR:
            code = payload.get("code")
            self.counters.count_error(str(code))
            seq = payload.get("seq")
            if code not in (wire.E_RATE, wire.E_STORAGE) and type(seq) is int and seq in self._frames:
                self._reject(seq, self._frames.pop(seq))
        elif kind == DEV_CMD:
            await self._answer(ws, payload)

    def _on_welcome(self, welcome: dict[str, Any], now: float) -> None:
        self.state = "online"
        self._attempt = 0
        last = welcome.get("last_seq")
        last = last if type(last) is int else 0
        if (not self._synced and last > 0 and self.outbox) or last >= self._next_seq:
            # Our counter is behind the gateway's (fresh process, wiped state): number the
            # unsent readings after the gateway's last_seq instead of letting them be "acked".
            seq = last + 1
            for item in self.outbox:
                item.seq = seq
                seq += 1
            self._next_seq = seq
            self._max_sent_seq = last
        self._synced = True
        self._release_acked()
        if self.clock_sync:
            gw_time = welcome.get("time")
            if type(gw_time) is int:  # set the device clock to the gateway's (skew cancelled)
                self._clock_extra_s += gw_time / 1000.0 - self.device_time(now)

    def _release_acked(self) -> None:
        acked = self.session.acked
        outbox = self.outbox
        while outbox and outbox[0].seq <= acked:
            outbox.popleft()
            self.counters.acked += 1
        for first in [f for f, last in self._frames.items() if last <= acked]:
            del self._frames[first]

    def _reject(self, first: int, last: int) -> None:
        """Drop a refused frame's readings (resending would not help) and free its window slot."""
        kept: deque[Any] = deque()
        for item in self.outbox:
            if first <= item.seq <= last:
                self.counters.rejected += 1
            else:
                kept.append(item)
        self.outbox = kept
        with contextlib.suppress(ValueError):
            self.session.in_flight.remove(last)

    async def _answer(self, ws: ClientConnection, cmd: dict[str, Any]) -> None:
        command_id = cmd.get("id")
        if type(command_id) is not str:
            self.counters.count_error("bad_command")
            return
        name = cmd.get("name")
        args = cmd.get("args")
        handler = _COMMANDS.get(name) if type(name) is str else None
        if not isinstance(args, dict):
            ok, msg = False, "args must be an object"
        elif handler is None:
            ok, msg = False, f"unknown command {str(name)[:32]!r}"
        else:
            ok, msg = handler(self, args)
        self.counters.commands += 1
        await self._send(ws, self.session.result_frame(command_id, ok, msg, {}))

    # ------------------------------------------------------------ commands
    def _cmd_set_interval(self, args: dict[str, Any]) -> tuple[bool, str]:
        seconds = args.get("seconds")
        if not wire.is_number(seconds) or not 0 < seconds < 86400 * 7:
            return False, "set_interval needs 'seconds', a number > 0"
        self.rate = 1.0 / float(seconds)
        self._next_sample_at = asyncio.get_running_loop().time() + float(seconds)
        return True, f"interval {seconds:g} s"

    def _cmd_set_thresholds(self, args: dict[str, Any]) -> tuple[bool, str]:
        metric, high, low = args.get("metric"), args.get("high"), args.get("low")
        if type(metric) is not str or not wire.is_number(high) or not wire.is_number(low):
            return False, "set_thresholds needs 'metric' (string), 'high' and 'low' (numbers)"
        if low > high:
            return False, "set_thresholds: 'low' must not exceed 'high'"
        self.thresholds[metric] = (float(low), float(high))
        return True, f"{metric} thresholds {low:g}..{high:g}"

    def _cmd_set_output(self, args: dict[str, Any]) -> tuple[bool, str]:
        output, on = args.get("output"), args.get("on")
        if output not in self.outputs or type(on) is not bool:
            return False, f"set_output needs 'output' (one of {', '.join(OUTPUTS)}) and 'on' (boolean)"
        self.outputs[output] = on
        return True, f"{output} {'on' if on else 'off'}"

    def _cmd_reboot(self, args: dict[str, Any]) -> tuple[bool, str]:
        self._reboot_pending = True
        return True, "rebooting"

    def _cmd_ping(self, args: dict[str, Any]) -> tuple[bool, str]:
        return True, "pong"

    # ------------------------------------------------------------ closes and refusals
    def _on_closed(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        if code != 1000:
            self.counters.count_error(f"close_{code}")
        reason = STOP_CODES.get(code)
        if reason is not None:
            self.stopped_reason = reason
        elif code == wire.CLOSE_EXPIRED:
            self._expired = True
        elif code == wire.CLOSE_TOO_MANY_ERRORS:
            self._attempt = max(self._attempt, 4)  # reconnect slowly

    async def _on_refused(self, exc: InvalidStatus) -> None:
        code = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = json.loads(exc.response.body or b"{}")
            code = str(body.get("code", ""))
        self.counters.count_error(code or f"http_{exc.response.status_code}")
        if code in STOP_HTTP_CODES:
            self.stopped_reason = code
        elif code == wire.E_EXPIRED:
            self._expired = True

    async def _refresh_credential(self) -> None:
        self._expired = False
        if self.credential_refresh is None:
            self.stopped_reason = wire.E_EXPIRED
            return
        try:
            fresh = await self.credential_refresh(self.device_id)
        except Exception:  # a broken hook stops this device, not the fleet
            self.counters.count_error("refresh_failed")
            fresh = None
        if fresh is None:
            self.stopped_reason = wire.E_EXPIRED
            return
        self.credential = fresh
        is_jwt = not wire.is_device_token(fresh)
        self.session.jwt = fresh if is_jwt else None
        self.session.token = None if is_jwt else fresh
        self._attempt = 0

    async def _mint_refresh(self, device_id: str) -> str | None:
        plan = self.faults.plan if self.faults is not None else None
        if plan is None or not plan.jwt_secret:
            return None
        return mint_jwt(plan.jwt_secret, device_id, plan.jwt_ttl_s)

    # ------------------------------------------------------------ time, sampling, waiting
    def _finished(self) -> bool:
        return self.stopped_reason is not None or (not self._generating and not self.outbox)

    def _backoff_delay(self) -> float:
        """Exponential backoff with full jitter in [50%, 100%] of the step."""
        step = min(self.backoff_max_s, self.backoff_initial_s * (2.0 ** self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        return step * self.rng.uniform(0.5, 1.0)

    async def _idle_until(self, until: float, gen_until: float) -> None:
        """Wait (sampling on schedule) until ``until``, an early wake-up, or a credential refresh."""
        loop = asyncio.get_running_loop()
        if self._expired:
            await self._refresh_credential()
            return
        while not self._finished():
            now = loop.time()
            self._generate_due(now, gen_until)
            if now >= until:
                return
            wake = min(until, self._next_sample_at if self._generating else until)
            try:
                async with asyncio.timeout_at(max(wake, now)) as waiter:
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

    def _new_boot(self, now: float) -> None:
        self._boot_at = now
        self.boot = f"{self.rng.getrandbits(32):08x}"
        self.session.boot = self.boot

    def _new_session(self) -> DeviceSession:
        cred = self.credential
        is_jwt = not wire.is_device_token(cred)
        return DeviceSession(self.device_id, None if is_jwt else cred, cred if is_jwt else None,
                                  None, self.batch, self._window)

    def _uptime_ms(self, now: float) -> int:
        return max(0, int((now - self._boot_at) * 1000))

    def _true_time(self, now: float) -> float:
        """Wall-clock Unix time corresponding to loop time ``now``."""
        return time.time() - (asyncio.get_running_loop().time() - now)

    def device_time(self, now: float) -> float:
        """The device's own clock (Unix s) at loop time ``now``: true time + skew/drift + sync."""
        offset = self.faults.clock_offset_s(now - self._loop_t0) if self.faults is not None else 0.0
        return self._true_time(now) + offset + self._clock_extra_s

    def _generate_due(self, now: float, gen_until: float) -> None:
        """Take every sample that is due; the outbox drops its oldest reading when full."""
        if not self._generating:
            return
        interval = 1.0 / self.rate
        taken = 0
        while self._next_sample_at <= now and self._next_sample_at < gen_until:
            at = self._next_sample_at
            self._next_sample_at += interval
            self._sample(at)
            taken += 1
            if taken >= 1000:  # the loop stalled for long: skip ahead rather than burst
                self._next_sample_at = now + interval
                break
        if now >= gen_until:
            self._generating = False

    def _sample(self, at: float) -> None:
        t_device = self.device_time(at)
        quality = None
        try:
            metrics = self.sensor.sample(t_device)
        except SensorReadError:
            self.counters.sensor_errors += 1
            try:
                metrics = self.sensor.sample(t_device)
                quality = wire.QUALITY_RETRIED
            except SensorReadError:
                self.counters.sensor_errors += 1
                return
        item = wire.Reading(self._next_seq, metrics, max(0, int(t_device * 1000)), self._uptime_ms(at), quality)
        self._next_seq += 1
        self.counters.generated += 1
        if len(self.outbox) >= self.outbox_max:
            self.outbox.popleft()
            self.counters.dropped += 1
        self.outbox.append(item)

    def _status_fields(self, now: float) -> dict[str, Any]:
        return {
            "dropped": self.counters.dropped, "buffered": len(self.outbox), "fw": FIRMWARE,
            "rssi": -45 - self.rng.randrange(40), "up": self._uptime_ms(now),
            "sensor_errors": self.counters.sensor_errors,
        }


_COMMANDS: dict[str, Callable[[VirtualDevice, dict[str, Any]], tuple[bool, str]]] = {
    "set_interval": VirtualDevice._cmd_set_interval,
    "set_thresholds": VirtualDevice._cmd_set_thresholds,
    "set_output": VirtualDevice._cmd_set_output,
    "reboot": VirtualDevice._cmd_reboot,
    "ping": VirtualDevice._cmd_ping,
}
