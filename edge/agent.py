"""The agent: sample sensors into the durable queue, drive outputs, talk protocol v1 to the gateway.

Tasks on one asyncio loop: the sampler (sensor reads run in a worker thread),
the uplink (connect with backoff + jitter, send queued readings through
protocol.device.DeviceSession, delete them on ack, answer commands), and the
supervisor (LED pattern, local rules, status file, systemd watchdog).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from edge import __version__, outputs
from edge.config import AgentConfig
from edge.errors import ConfigError, EdgeError, OutputError, QueueError, SensorError
from edge.outputs import Outputs
from edge.rules import Rules
from edge.sensors.base import Sensor, SensorContext, build_sensor
from edge.store import ReadingQueue
from protocol import wire
from protocol.device import DEV_ACK, DEV_CMD, DEV_ERROR, DEV_SLOW, DEV_WELCOME, DeviceSession
from runtime import sdnotify

LOG = logging.getLogger("edgewire.edge.agent")

EXIT_OK = 0
EXIT_RESTART = 75  # reboot command: exit non-zero so systemd (Restart=on-failure) starts us again
# close codes after which retrying soon cannot help
SLOW_RETRY = {wire.CLOSE_AUTH_FAILED, wire.CLOSE_DISABLED, wire.CLOSE_ADDRESS, wire.CLOSE_IDENTITY,
              wire.CLOSE_REPLACED, wire.CLOSE_TOO_BIG}


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:32]
    except OSError:
        return uuid.uuid4().hex


def uptime_ms() -> int:
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return int(time.clock_gettime(clock) * 1000)


def clock_synced() -> bool:
    """True when wall-clock time can be trusted for ``ts``.

    timesyncd says it is synchronized, or there is no timesyncd and the year is sane.
    """
    if os.path.exists("/run/systemd/timesync/synchronized"):
        return True
    if os.path.isdir("/run/systemd/timesync"):
        return False
    return time.time() > 1_704_067_200  # 2024-01-01


def apply_pin_factory(cfg: AgentConfig) -> None:
    """Pick gpiozero's pin factory: config pin_factory, else $GPIOZERO_PIN_FACTORY, else mock for sim."""
    if cfg.pin_factory:
        os.environ["GPIOZERO_PIN_FACTORY"] = cfg.pin_factory
    if cfg.backend == "sim" and os.environ.get("GPIOZERO_PIN_FACTORY", "mock") == "mock":
        from edge.sim import use_mock_pins

        use_mock_pins()


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.stop_flag = threading.Event()
        self.queue = ReadingQueue(cfg.queue_path, cfg.max_readings, cfg.max_age)
        self.boot = boot_id()
        self.queue.forget_uptime(self.boot)
        self.buffered = self.queue.count()
        apply_pin_factory(cfg)
        ctx = SensorContext(cfg.backend, self.interruptible_sleep)
        self.sensors: list[Sensor] = [build_sensor(spec, ctx) for spec in cfg.sensors]
        self.outputs = Outputs(cfg.outputs)
        self.rules = Rules(cfg.rules)
        for saved in self.queue.get_setting("thresholds") or []:
            self.rules.set_thresholds(saved["metric"], saved.get("high"), saved.get("low"))
        self.interval: float = self.queue.get_setting("interval") or cfg.interval
        self.connected = False
        self.exit_code = EXIT_OK
        self.sensor_errors = 0
        self.failing: set[str] = set()
        self.heartbeat = time.monotonic()
        self.stall_after: float | None = None  # default 2 * interval + 120 s
        self.kick: asyncio.Event | None = None
        self.interval_changed: asyncio.Event | None = None
        self.stopping: asyncio.Event | None = None
        self.frames: dict[int, int] = {}  # first seq -> last seq of frames sent on this connection
        self.reported: tuple[int, int] = (-1, -1)  # (dropped, rejected) last sent in a status frame
        self.ws: ClientConnection | None = None

    def interruptible_sleep(self, seconds: float) -> None:
        """Sleep for sensor retries that returns at once when the agent stops."""
        self.stop_flag.wait(seconds)

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self.kick = asyncio.Event()
        self.interval_changed = asyncio.Event()
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):  # not the main thread
                loop.add_signal_handler(sig, self.stop, EXIT_OK)
        LOG.info("agent %s starting: device %s, %d sensors, outputs %s, queue %s (%d buffered, next seq %d)",
                 __version__, self.cfg.device_id, len(self.sensors), ",".join(self.outputs.devices) or "none",
                 self.cfg.queue_path, self.buffered, self.queue.next_seq)
        tasks = [asyncio.create_task(self.sampler(), name="sampler"),
                 asyncio.create_task(self.uplink(), name="uplink"),
                 asyncio.create_task(self.supervisor(), name="supervisor")]
        sdnotify.notify("READY=1\nSTATUS=sampling; connecting to gateway")
        stopper = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                LOG.error("task %s failed: %r", task.get_name(), task.exception())
                self.exit_code = 1
        sdnotify.notify("STOPPING=1")
        self.stop_flag.set()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(wire.CLOSE_GOING_AWAY, "agent stopping"), 2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.connected = False
        with contextlib.suppress(OSError):
            self.write_status()
        self.close()
        LOG.info("agent stopped (exit %d)", self.exit_code)
        return self.exit_code

    def stop(self, code: int) -> None:
        self.exit_code = code
        self.stop_flag.set()
        if self.stopping is not None:
            self.stopping.set()

    def close(self) -> None:
        for sensor in self.sensors:
            with contextlib.suppress(Exception):
                sensor.close()
        self.outputs.close()
        self.queue.close()

    # ------------------------------------------------------------ sampling
    def read_all(self) -> list[tuple[Sensor, Any]]:
        """Read every sensor once (blocking); SensorError instead of a Sample for failures."""
        results: list[tuple[Sensor, Any]] = []
        for sensor in self.sensors:
            if self.stop_flag.is_set():
                break
            try:
                results.append((sensor, sensor.read()))
            except SensorError as err:
                results.append((sensor, err))
        return results

    def record(self, results: list[tuple[Sensor, Any]]) -> dict[str, float]:
        ts = int(time.time() * 1000) if clock_synced() else None
        up = uptime_ms()
        merged: dict[str, float] = {}
        for sensor, result in results:
            if isinstance(result, SensorError):
                self.sensor_errors += 1
                if sensor.name not in self.failing:
                    self.failing.add(sensor.name)
                    LOG.warning("sensor %s: %s", sensor.name, result)
                continue
            if sensor.name in self.failing:
                self.failing.discard(sensor.name)
                LOG.info("sensor %s reads again", sensor.name)
            values: dict[str, float] = {}
            for name, value in result.metrics.items():
                low, high = wire.metric_range(name)
                if math.isfinite(value) and low <= value <= high:
                    values[name] = value
                else:  # the gateway would refuse the whole frame (bad_value): keep it out of the queue
                    self.sensor_errors += 1
                    LOG.warning("sensor %s: %s = %s is outside %s..%s; not sent, check the sensor and its "
                                "calibration", sensor.name, name, value, low, high)
            if not values:
                continue
            self.queue.append(values, ts, up, result.quality, self.boot)
            merged.update(values)
        self.buffered = self.queue.count()
        return merged

    async def sampler(self) -> None:
        assert self.kick is not None and self.interval_changed is not None
        while not self.stop_flag.is_set():
            started = time.monotonic()
            results = await asyncio.to_thread(self.read_all)
            merged = self.record(results)
            self.rules.update(merged)
            self.apply_rules()
            self.heartbeat = time.monotonic()
            self.kick.set()
            delay = self.interval - (time.monotonic() - started)
            self.interval_changed.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.interval_changed.wait(), delay)

    def apply_rules(self) -> None:
        if self.connected:
            return
        for name, on in self.rules.wanted_outputs().items():
            with contextlib.suppress(OutputError):
                if self.outputs.local.get(name) != on:
                    LOG.info("gateway unreachable: local rule switches %s %s", name, "on" if on else "off")
                    self.outputs.set(name, on, "rule")

    # ------------------------------------------------------------ supervisor
    def led_state(self) -> str:
        if self.rules.alerting:
            return outputs.ALERT
        if self.connected:
            return outputs.ONLINE
        return outputs.BUFFERING if self.buffered else outputs.CONNECTING

    def healthy(self) -> bool:
        """The sampling loop completed a cycle recently (it runs sensor reads and the queue)."""
        stall_limit = self.stall_after or 2 * self.interval + 120.0
        return time.monotonic() - self.heartbeat < stall_limit

    def write_status(self) -> None:
        status = {
            "pid": os.getpid(), "device": self.cfg.device_id, "connected": self.connected,
            "led": self.outputs.pattern, "outputs": self.outputs.states(),
            "pins": self.outputs.pin_levels(), "buffered": self.buffered,
            "dropped": self.queue.dropped, "rejected": self.queue.rejected, "next_seq": self.queue.next_seq,
            "interval": self.interval, "alerting": self.rules.alerting, "sensor_errors": self.sensor_errors,
            "updated": time.time(),
        }
        path = self.cfg.status_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)

    async def supervisor(self) -> None:
        watchdog = sdnotify.watchdog_interval()
        last_watchdog = 0.0
        warned = False
        while True:
            if self.outputs.pattern != "commanded":
                self.outputs.show(self.led_state())
            self.write_status()
            now = time.monotonic()
            if watchdog is not None and now - last_watchdog >= watchdog:
                if self.healthy():
                    sdnotify.notify("WATCHDOG=1")
                    last_watchdog = now
                    warned = False
                elif not warned:
                    LOG.error("sampler stalled for %.0f s; withholding the systemd watchdog",
                              now - self.heartbeat)
                    warned = True
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------ uplink
    async def uplink(self) -> None:
        backoff = self.cfg.backoff_min
        while not self.stop_flag.is_set():
            slow = False
            try:
                async with connect(
                    self.cfg.gateway,
                    additional_headers={"Authorization": f"Bearer {self.cfg.token}"},
                    open_timeout=self.cfg.connect_timeout,
                    ping_interval=self.cfg.ping_interval,
                    ping_timeout=self.cfg.ping_interval,
                    compression="deflate" if self.cfg.compression else None,
                    max_size=1 << 20,
                    user_agent_header=f"edgewire-agent/{__version__}",
                ) as ws:
                    self.ws = ws
                    if await self.session(ws):
                        backoff = self.cfg.backoff_min
            except InvalidStatus as err:
                code = err.response.status_code
                body = err.response.body.decode(errors="replace")[:200] if err.response.body else ""
                LOG.error("gateway refused the connection: HTTP %d %s; check agent.device_id and the token",
                          code, body)
                slow = code in (401, 403)
            except ConnectionClosed as err:
                rcvd = err.rcvd
                close_code = rcvd.code if rcvd else 1006
                reason = rcvd.reason if rcvd else ""
                LOG.warning("connection closed: %d %s", close_code, reason)
                slow = close_code in SLOW_RETRY
            except QueueError:
                raise  # the disk, not the network: let systemd restart us and the log say why
            except (OSError, InvalidHandshake, TimeoutError, wire.ProtocolError) as err:
                LOG.warning("gateway unreachable: %s", err or type(err).__name__)
            finally:
                self.ws = None
                if self.connected:
                    LOG.info("offline; readings are kept in %s", self.cfg.queue_path)
                self.connected = False
                self.apply_rules()
            if self.stop_flag.is_set():
                break
            if slow:
                backoff = max(backoff, self.cfg.backoff_max)
            delay = backoff * random.uniform(0.5, 1.0)
            backoff = min(backoff * 2, self.cfg.backoff_max)
            LOG.debug("reconnecting in %.1f s", delay)
            assert self.stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def session(self, ws: ClientConnection) -> bool:
        """One connection: welcome, then send/receive until it closes. True if it got a welcome."""
        session = DeviceSession(self.cfg.device_id, boot=self.boot, max_batch=self.cfg.max_batch,
                                     window=self.cfg.window)
        text = await asyncio.wait_for(ws.recv(), self.cfg.connect_timeout)
        kind, payload = session.receive(text if isinstance(text, str) else text.decode())
        if kind != DEV_WELCOME:
            raise wire.ProtocolError(wire.E_BAD_FRAME, f"expected welcome, got {kind}")
        self.queue.welcome(int(payload.get("last_seq") or 0))
        self.buffered = self.queue.count()
        self.frames.clear()
        self.connected = True
        self.outputs.restore()
        LOG.info("online: gateway stored through seq %s, %d readings to send", payload.get("last_seq"),
                 self.buffered)
        await ws.send(session.status_frame(self.status_fields()))
        self.reported = (self.queue.dropped, self.queue.rejected)
        sender = asyncio.create_task(self.sender(ws, session))
        try:
            async for message in ws:
                await self.handle(ws, session, message if isinstance(message, str) else message.decode())
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
            session.connection_lost()
        return True

    def status_fields(self) -> dict[str, Any]:
        return {"dropped": self.queue.dropped, "buffered": self.buffered, "rejected": self.queue.rejected,
                "fw": __version__, "interval": self.interval, "sensor_errors": self.sensor_errors,
                "alert": self.rules.alerting, "outputs": self.outputs.states()}

    async def sender(self, ws: ClientConnection, session: DeviceSession) -> None:
        assert self.kick is not None
        last_status = time.monotonic()
        while True:
            if session.send_after_ms:
                wait = session.send_after_ms / 1000
                session.send_after_ms = 0
                await asyncio.sleep(wait)
            frame = None
            if session.can_send():
                pending = self.queue.pending(after=session.sent, limit=session.max_batch)
                frame = session.next_frame(pending, uptime_ms()) if pending else None
            if frame is not None:
                self.frames[pending[0].seq] = session.sent
                await ws.send(frame)
                await asyncio.sleep(1.0 / session.rate)  # stay inside the gateway's rate limit
                continue
            counts = (self.queue.dropped, self.queue.rejected)
            now = time.monotonic()
            if counts != self.reported or now - last_status >= self.cfg.status_interval:
                await ws.send(session.status_frame(self.status_fields()))
                self.reported = counts
                last_status = now
            self.kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), self.cfg.status_interval)

    async def handle(self, ws: ClientConnection, session: DeviceSession, text: str) -> None:
        assert self.kick is not None
        try:
            kind, payload = session.receive(text)
        except wire.ProtocolError as err:
            LOG.warning("ignored a frame from the gateway: %s", err.message)
            return
        if kind == DEV_ACK:
            self.queue.acked(payload)
            for first in [f for f, last in self.frames.items() if last <= payload]:
                del self.frames[first]
            self.buffered = self.queue.count()
            self.kick.set()
        elif kind == DEV_CMD:
            ok, message, data = self.command(payload["name"], payload["args"])
            command_id = payload["id"] if isinstance(payload["id"], str) else str(payload["id"])
            await ws.send(session.result_frame(command_id, ok, message, data))
            LOG.info("command %s: %s", payload["name"], message)
            if ok and payload["name"] == "reboot":
                self.stop(EXIT_RESTART)
        elif kind == DEV_SLOW:
            LOG.info("gateway asks to slow down: rate %s/s, retry in %s ms", payload.get("rate"),
                     payload.get("retry_ms"))
            self.kick.set()
        elif kind == DEV_ERROR:
            seq = payload.get("seq")
            code = payload.get("code")
            if code in (wire.E_RATE, wire.E_STORAGE):
                LOG.warning("gateway did not store seq %s (%s); resending", seq, code)
            elif isinstance(seq, int) and seq in self.frames:
                last = self.frames.pop(seq)
                dropped = self.queue.reject(seq, last)
                LOG.error("gateway refused readings %d-%d (%s: %s); dropped %d", seq, last, code,
                          payload.get("msg"), dropped)
            else:
                LOG.error("gateway error %s: %s", code, payload.get("msg"))
            self.buffered = self.queue.count()
            self.kick.set()

    # ------------------------------------------------------------ commands
    def command(self, name: Any, args: Any) -> tuple[bool, str, dict[str, Any] | None]:
        """Carry out a gateway command; (ok, message, data). Never raises for bad input."""
        if not isinstance(args, dict):
            return False, "args must be an object", None
        if name == "ping":
            return True, "pong", {"buffered": self.buffered, "connected": True}
        if name == "set_interval":
            seconds: Any = args.get("seconds")
            if not wire.is_number(seconds) or not math.isfinite(seconds) or seconds <= 0:
                return False, "set_interval needs seconds > 0", None
            self.interval = float(seconds)
            self.queue.put_setting("interval", self.interval)
            assert self.interval_changed is not None
            self.interval_changed.set()
            return True, f"interval {self.interval:g} s", {"seconds": self.interval}
        if name == "set_thresholds":
            metric: Any = args.get("metric")
            high: Any = args.get("high")
            low: Any = args.get("low")
            if not isinstance(metric, str) or not metric:
                return False, "set_thresholds needs a metric name", None
            for key, value in (("high", high), ("low", low)):
                if value is not None and (not wire.is_number(value) or not math.isfinite(value)):
                    return False, f"set_thresholds: {key} must be a number", None
            if high is None and low is None:
                return False, "set_thresholds needs high, low or both", None
            if high is not None and low is not None and low >= high:
                return False, "set_thresholds: low must be below high", None
            self.rules.set_thresholds(metric, None if high is None else float(high),
                                      None if low is None else float(low))
            self.queue.put_setting("thresholds", [{"metric": s.metric, "high": s.high, "low": s.low}
                                                  for s in self.rules.specs])
            return True, f"thresholds for {metric}: low {low}, high {high}", None
        if name == "set_output":
            output, on = args.get("output"), args.get("on")
            if not isinstance(output, str) or not isinstance(on, bool):
                return False, "set_output needs output (name) and on (boolean)", None
            try:
                self.outputs.set(output, on)
            except OutputError as err:
                return False, str(err), None
            return True, f"{output} {'on' if on else 'off'}", {"outputs": self.outputs.states()}
        if name == "reboot":
            return True, "restarting the agent service", None
        return False, f"unknown command {str(name)[:32]!r}; known: ping, set_interval, set_thresholds, " \
                      "set_output, reboot", None


def run(cfg: AgentConfig) -> int:
    """Run the agent until SIGTERM (exit 0) or a reboot command (exit EXIT_RESTART)."""
    try:
        agent = Agent(cfg)
    except (EdgeError, ConfigError) as err:
        LOG.error("%s", err)
        return 1
    return asyncio.run(agent.run())
