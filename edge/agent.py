"""The agent: sample sensors into the durable queue, drive outputs, talk protocol v1 to the gateway.

Tasks on one asyncio loop: the sampler (sensor reads run in a worker thread),
the uplink (edge/uplink.py: protocol.device.DeviceSession over one WebSocket at a
time, bound to the SQLite queue), and the supervisor (LED pattern, local rules,
status file, systemd watchdog). The agent registers its command handlers with
the session; the session validates their arguments (protocol.wire.COMMANDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from edge import __version__, outputs
from edge.config import AgentConfig
from edge.errors import ConfigError, EdgeError, OutputError, SensorError
from edge.ota_agent import PiUpdates, new_core
from edge.outputs import Outputs
from edge.rules import Rules
from edge.sensors.base import Sensor, SensorContext, backend_class, build_sensor
from edge.store import ReadingQueue
from edge.uplink import CredentialSource, Uplink
from protocol import wire
from protocol.device import Backoff, Decision, DeviceSession
from runtime import sdnotify

LOG = logging.getLogger("edgewire.edge.agent")

EXIT_OK = 0
EXIT_RESTART = 75  # reboot command: exit non-zero so systemd (Restart=on-failure) starts us again
CommandResult = tuple[bool, str, dict[str, Any] | None]


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


def apply_pin_factory(cfg: AgentConfig) -> str | None:
    """Pick gpiozero's pin factory: config pin_factory, else $GPIOZERO_PIN_FACTORY, else the backend's
    (mock pins for sim: edge/hardware.py's prepare()).

    Loads it once, here. Off a Raspberry Pi none loads: the one plain note returned says so (callers print
    or log it once), and gpiozero's "Falling back from lgpio / rpigpio / pigpio / native" warnings, which
    every GPIO sensor and output would repeat, are silenced. None when a factory loaded.
    """
    if cfg.pin_factory:
        os.environ["GPIOZERO_PIN_FACTORY"] = cfg.pin_factory
    backend_class(cfg.backend).prepare()
    if cfg.backend == "sim" and os.environ.get("GPIOZERO_PIN_FACTORY", "mock") == "mock":
        return None
    try:
        from gpiozero import Device
        from gpiozero.exc import GPIOZeroError, PinFactoryFallback
    except ImportError:
        return None  # each GPIO sensor says gpiozero is missing and how to install it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PinFactoryFallback)
            Device.ensure_pin_factory()
    except GPIOZeroError as err:
        warnings.filterwarnings("ignore", category=PinFactoryFallback)
        return (f"no GPIO here (gpiozero: {err}): this is not a Raspberry Pi, or its GPIO library is missing, "
                "so sensors and outputs on GPIO pins cannot work; on a Pi install python3-lgpio "
                "(docs/edge-agent.md), elsewhere set backend = \"sim\" (simulated sensors and pins)")
    return None


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.stop_flag = threading.Event()
        self.queue = ReadingQueue(cfg.queue_path, cfg.max_readings, cfg.max_age)
        self.boot = boot_id()
        self.queue.forget_uptime(self.boot)
        self.buffered = self.queue.count()
        note = apply_pin_factory(cfg)
        if note:
            LOG.warning("%s", note)
        ctx = SensorContext(cfg.backend, self.interruptible_sleep)
        self.sensors: list[Sensor] = [build_sensor(spec, ctx) for spec in cfg.sensors]
        self.outputs = Outputs(cfg.outputs)
        self.rules = Rules(cfg.rules)
        for saved in self.queue.get_setting("thresholds") or []:
            self.rules.set_thresholds(saved["metric"], saved.get("high"), saved.get("low"))
        self.interval: float = self.queue.get_setting("interval") or cfg.interval
        self.exit_code = EXIT_OK
        self.reboot_requested = False
        self.sensor_errors = 0
        self.failing: set[str] = set()
        self.heartbeat = time.monotonic()
        self.stall_after: float | None = None  # default 2 * interval + 120 s
        self.interval_changed: asyncio.Event | None = None
        self.stopping: asyncio.Event | None = None
        self.credentials = CredentialSource(cfg)
        self.updates: PiUpdates | None = PiUpdates(new_core(__version__, cfg.ota_pubkey, cfg.state_dir), cfg.ota_dir)
        try:
            self.updates.start()
        except OSError as err:
            LOG.error("over-the-air updates are off: %s: %s", cfg.ota_dir, err.strerror or err)
            self.updates = None
        self.session = DeviceSession(
            cfg.device_id, token=cfg.token, boot=self.boot, max_batch=cfg.max_batch, window=cfg.window,
            outbox=self.queue, backoff=Backoff(cfg.backoff_min * 1000, cfg.backoff_max * 1000),
            handlers={"ping": self.cmd_ping, "set_interval": self.cmd_set_interval,
                      "set_thresholds": self.cmd_set_thresholds, "set_output": self.cmd_set_output,
                      "reboot": self.cmd_reboot},
            encoding=cfg.encoding, ota=self.updates.core if self.updates is not None else None)
        self.started = time.time()
        self.uplink: Uplink | None = None
        self.credential_poll_s = Uplink.credential_poll_s

    @property
    def connected(self) -> bool:
        return self.uplink is not None and self.uplink.connected

    def interruptible_sleep(self, seconds: float) -> None:
        """Sleep for sensor retries that returns at once when the agent stops."""
        self.stop_flag.wait(seconds)

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self.interval_changed = asyncio.Event()
        self.stopping = asyncio.Event()
        self.uplink = Uplink(self.cfg, self.session, self.credentials, self, uptime_ms)
        self.uplink.credential_poll_s = self.credential_poll_s
        self.uplink.updates = self.updates
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):  # not the main thread
                loop.add_signal_handler(sig, self.stop, EXIT_OK)
        LOG.info("agent %s starting: device %s, %d sensors, outputs %s, queue %s (%d buffered, next seq %d)",
                 __version__, self.cfg.device_id, len(self.sensors), ",".join(self.outputs.devices) or "none",
                 self.cfg.queue_path, self.buffered, self.queue.next_seq)
        tasks = [asyncio.create_task(self.sampler(), name="sampler"),
                 asyncio.create_task(self.uplink.run(self.stopping), name="uplink"),
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
        self.stopping.set()
        await self.uplink.close()
        for task in [*tasks, stopper]:
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
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
        assert self.interval_changed is not None and self.uplink is not None
        while not self.stop_flag.is_set():
            started = time.monotonic()
            results = await asyncio.to_thread(self.read_all)
            merged = self.record(results)
            self.rules.update(merged)
            self.apply_rules()
            self.heartbeat = time.monotonic()
            self.uplink.kick.set()
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
                now = self.outputs.local.get(name, self.outputs.commanded.get(name, False))
                if now != on:  # an output already as the rule wants it is left alone (and not logged)
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
        uplink = self.uplink
        status = {
            "pid": os.getpid(), "device": self.cfg.device_id, "connected": self.connected,
            "uplink": uplink.state if uplink is not None else "idle", "reason": uplink.reason if uplink else "",
            "led": self.outputs.pattern, "outputs": self.outputs.states(),
            "pins": self.outputs.pin_levels(), "buffered": self.buffered,
            "dropped": self.queue.dropped, "rejected": self.queue.rejected, "next_seq": self.queue.next_seq,
            "interval": self.interval, "alerting": self.rules.alerting, "sensor_errors": self.sensor_errors,
            "fw": __version__, "started": self.started, "acked": uplink is not None and uplink.acks > 0,
            "updated": time.time(),
        }
        path = self.cfg.status_path
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(status))
        os.replace(tmp, path)

    async def supervisor(self) -> None:
        watchdog = sdnotify.watchdog_interval()
        last_watchdog = 0.0
        warned = False
        while True:
            if self.outputs.pattern != "commanded":
                self.outputs.show(self.led_state())
            self.write_status()
            if self.uplink is not None and self.updates is not None and self.updates.poll():
                self.uplink.kick.set()  # an update frame is due (the updater wrote its result)
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

    # ------------------------------------------------------------ uplink callbacks (edge.uplink.UplinkHost)
    def went_online(self, decision: Decision) -> None:
        self.buffered = self.queue.count()
        self.outputs.restore()
        LOG.info("online: gateway stored through seq %d, %d readings to send", decision.seq, self.buffered)

    def went_offline(self) -> None:
        self.buffered = self.queue.count()
        if not self.stop_flag.is_set():  # a clean stop closes the connection: the gateway is not unreachable
            self.apply_rules()

    def outbox_changed(self) -> None:
        self.buffered = self.queue.count()

    def status_fields(self) -> dict[str, Any]:
        return {"dropped": self.queue.dropped, "buffered": self.queue.count(), "rejected": self.queue.rejected,
                "fw": __version__, "kind": "pi", "up": uptime_ms(), "interval": self.interval,
                "sensor_errors": self.sensor_errors,
                "alert": self.rules.alerting, "outputs": self.outputs.states()}

    def reboot(self) -> None:
        self.stop(EXIT_RESTART)

    # ------------------------------------------------------------ commands (arguments checked by the session)
    def command(self, name: Any, args: Any) -> CommandResult:
        """Carry out a command as if the gateway sent it: (ok, message, data). Never raises for bad input."""
        ok, message, data = self.session.run_command(name, args)
        return ok, message, data

    def cmd_ping(self, args: dict[str, Any]) -> CommandResult:
        return True, "pong", {"buffered": self.buffered, "connected": self.connected}

    def cmd_set_interval(self, args: dict[str, Any]) -> CommandResult:
        self.interval = float(args["seconds"])
        self.queue.put_setting("interval", self.interval)
        if self.interval_changed is not None:
            self.interval_changed.set()
        return True, f"interval {self.interval:g} s", {"seconds": self.interval}

    def cmd_set_thresholds(self, args: dict[str, Any]) -> CommandResult:
        metric: str = args["metric"]
        high, low = args.get("high"), args.get("low")
        self.rules.set_thresholds(metric, None if high is None else float(high), None if low is None else float(low))
        self.queue.put_setting("thresholds", [{"metric": s.metric, "high": s.high, "low": s.low}
                                              for s in self.rules.specs])
        return True, f"thresholds for {metric}: low {low}, high {high}", None

    def cmd_set_output(self, args: dict[str, Any]) -> CommandResult:
        output: str = args["output"]
        on: bool = args["on"]
        try:
            self.outputs.set(output, on)
        except OutputError as err:
            return False, str(err), None
        return True, f"{output} {'on' if on else 'off'}", {"outputs": self.outputs.states()}

    def cmd_reboot(self, args: dict[str, Any]) -> CommandResult:
        self.reboot_requested = True
        return True, "restarting the agent service", None


def run(cfg: AgentConfig) -> int:
    """Run the agent until SIGTERM (exit 0) or a reboot command (exit EXIT_RESTART)."""
    try:
        agent = Agent(cfg)
    except (EdgeError, ConfigError) as err:
        LOG.error("%s", err)
        return 1
    return asyncio.run(agent.run())
