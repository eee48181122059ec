"""Edgewire node main loop: sample -> flash ring -> gateway, commands back.

One flat, single-threaded loop. Each iteration samples when due, keeps the
connection (Wi-Fi, then the WebSocket), sends unacknowledged readings from the
ring file, handles the gateway's frames, drives the LED and feeds the watchdog.
protocol.device.DeviceSession, bound to the ring, makes every protocol decision
(what to send and resend, acks, refusals, slow-downs, command arguments, and
what to do after each close code: back off, retry hourly, refresh the
credential from config.json, or stop until a reboot with a new credential);
this module does the I/O. Readings leave the ring only when acknowledged.
"""

import gc
import json
import random

import clock
import commands
import config as config_module
import machine
import slots
from adaptive import Adaptive
from errors import ConfigError, NetError, RingError, SensorError
from led import Led
from micropython import const
from ring import Ring
from sensors import Sensor, open_driver
from watchdog import Watchdog
from wifi import WiFi
from wsclient import WSClient

from protocol import wire
from protocol.device import (
    D_CLOSING,
    D_COMMAND,
    D_DROP,
    D_INVALID,
    D_NOTE,
    D_OTA_CHUNK,
    D_WELCOME,
    R_REFRESH,
    R_STOP,
    Backoff,
    DeviceSession,
)

FW_VERSION = "0.1.0"
LOOP_MS = const(100)  # longest wait between loop iterations
_WELCOME_MS = const(5000)
_PING_IDLE_MS = const(30000)  # ping the gateway after this long without a frame
_DEAD_IDLE_MS = const(75000)  # give the connection up after this long
_NTP_RETRY_MS = const(60000)
_STATUS_MIN_MS = const(10000)
_DEEP_SLEEP_SEND_MS = const(15000)  # time a waking node spends delivering


def log(*parts):
    print("[%d]" % clock.up_ms(), *parts)


def heap_free():
    return gc.mem_free() if hasattr(gc, "mem_free") else None


_RESET_NAMES = {1: "power_on", 2: "hard", 3: "watchdog", 4: "deep_sleep", 5: "soft"}


def reset_name():
    """Why this boot happened (machine.reset_cause()), for the status frame."""
    try:
        return _RESET_NAMES.get(machine.reset_cause(), "unknown")
    except AttributeError:
        return "unknown"


def _rtc_state():
    """State saved before a deep sleep, or None after any other reset."""
    try:
        if machine.reset_cause() != machine.DEEPSLEEP_RESET:
            return None
        raw = machine.RTC().memory()
        return json.loads(raw) if raw else None
    except (AttributeError, ValueError, OSError):
        return None


class App:
    """The node. ``run()`` loops forever (or until ``stop()`` returns True)."""

    def __init__(self, cfg, path=None):
        self.cfg = cfg
        self.config_path = path  # re-read when the gateway says the credential expired
        self.now_ms = 0
        state = _rtc_state() if cfg["deep_sleep"] else None
        if state and type(state.get("b")) is int and type(state.get("u")) is int:
            self.boot = state["b"]  # one boot id across deep sleeps; uptime continues
            clock.resume(state["u"])
        else:
            self.boot = random.getrandbits(32) or 1
        self.boot_id = "%08x" % self.boot
        self.reset = reset_name()
        self.watchdog = Watchdog(cfg["watchdog_s"])
        self.led = Led(cfg["led_pin"])
        self.clock = clock.Clock()
        self.ring = Ring(cfg["ring_path"], cfg["ring_records"], self.boot)
        if self.clock.synced():
            self.ring.set_sync(self.boot, self.clock.offset)
        self.sensor = Sensor(open_driver(cfg["sensor"], cfg["sensor_pin"]), self.wait_ms)
        floor_s = self.sensor.driver.RETRY_MS / 1000
        self.adaptive = Adaptive(max(cfg["interval_s"], floor_s), max(cfg["min_interval_s"], floor_s),
                                 max(cfg["max_interval_s"], floor_s), cfg["deadband"], cfg["thresholds"])
        if state:
            self.adaptive.restore(state.get("a"), clock.up_ms(), 0)
        self.fw = slots.running_version(FW_VERSION)  # the release this boot runs (its slot's record)
        self.ota = None  # the updater (ota_agent), loaded when there is update work: updater()
        self.outputs = {}
        for name in cfg["output_pins"]:
            self.outputs[name] = machine.Pin(cfg["output_pins"][name], machine.Pin.OUT, value=0)
        self.session = DeviceSession(cfg["device_id"], token=cfg["token"], jwt=cfg["jwt"], boot=self.boot_id,
                                     max_batch=cfg["max_batch"], outbox=self.ring, backoff=Backoff(1000, 60000),
                                     handlers=commands.handlers(self), encoding=cfg["encoding"])
        if slots.pending():
            self.updater()
        self.wifi = WiFi(cfg["wifi_ssid"], cfg["wifi_password"], self.wait_ms)
        self.ca = config_module.read_ca(cfg)
        self.ws = None
        self.next_sample_ms = 0
        self.next_connect_ms = 0  # Wi-Fi backoff; the gateway's is session.retry_at_ms
        self.next_ntp_ms = 0
        self.status_at_ms = 0
        self.status_dropped = -1
        self.pinged = False
        self.reboot_requested = False
        self.fatal = None  # why the node stopped connecting (until a reboot with a new credential)
        if state:
            self._restore_connection(state)
        self.counts = {"samples": 0, "reported": 0, "sensor_errors": 0, "invalid": 0, "ring_errors": 0,
                       "loop_errors": 0, "connects": 0}
        if hasattr(gc, "threshold"):
            gc.threshold(gc.mem_free() // 4 + gc.mem_alloc())
        log("boot", self.boot_id, "fw", self.fw, "reset", self.reset, "buffered", self.ring.count,
            "next_seq", self.ring.next_seq)

    # -- waiting
    def wait_ms(self, ms):
        """Sleep ``ms`` inside a healthy iteration, feeding the watchdog."""
        while ms > 0:
            step = 1000 if ms > 1000 else ms
            clock.sleep_ms(step)
            self.watchdog.feed()
            ms -= step

    # -- sampling
    def sample(self, now):
        """Read the sensor; store the reading in the ring if adaptive.decide() reports it."""
        self.counts["samples"] += 1
        try:
            metrics, quality = self.sensor.read()
        except SensorError as err:
            self.counts["sensor_errors"] += 1
            log("sensor:", err)
            self.next_sample_ms = now + self.adaptive.interval_ms
            return
        now = self.now_ms = clock.up_ms()
        if not self.adaptive.decide(metrics, now):
            self.next_sample_ms = now + self.adaptive.interval_ms
            return
        ts = self.clock.epoch_ms_at(now)
        up = None if ts is not None else now
        try:  # the gateway would refuse the whole frame: refuse the one reading here instead
            wire.parse_data(wire.data_message(1, [wire.Reading(1, metrics, ts, up, quality)]))
        except wire.ProtocolError as err:
            self.counts["invalid"] += 1
            log("reading refused:", err.code, err.message)
        else:
            try:
                self.ring.append(metrics, self.boot, ts, up, quality)
                self.counts["reported"] += 1
            except RingError as err:
                self.counts["ring_errors"] += 1
                log("ring:", err)
        self.next_sample_ms = now + self.adaptive.interval_ms

    # -- connection
    def connect(self, now):
        """One bounded attempt to get online (Wi-Fi, NTP, WebSocket, welcome)."""
        self.led.set("connecting", now)
        if not self.wifi.isconnected() and not self.wifi.connect():
            self.next_connect_ms = clock.up_ms() + self.wifi.backoff.next_ms()
            log("wifi: not connected (" + str(self.wifi.reason) + "); retry in", self.next_connect_ms - now, "ms")
            return False
        if not self.clock.synced() and now - self.next_ntp_ms >= 0:
            if self.clock.sync():
                self.ring.set_sync(self.boot, self.clock.offset)
                log("clock synced")
            else:
                self.next_ntp_ms = now + _NTP_RETRY_MS
        self.counts["connects"] += 1
        ws = WSClient(self.cfg["gateway_url"], self.ca, 5000)
        try:
            ws.connect(None, self.session.subprotocols())
            self.session.negotiated(ws.subprotocol)
            self.ws = ws
            auth = self.session.auth_frame()
            if auth is not None:
                ws.send_text(auth)
            start = clock.ticks_ms()
            while True:
                text = ws.recv(_WELCOME_MS)
                if text is None or clock.ticks_diff(clock.ticks_ms(), start) > _WELCOME_MS:
                    raise NetError("no welcome from the gateway within " + str(_WELCOME_MS) + " ms")
                if self.handle(text, clock.up_ms()) == D_WELCOME:
                    break
        except NetError as err:
            self.offline(err)
            return False
        self.pinged = False
        self.status_at_ms = now
        self.status_dropped = -1
        self.fatal = None
        log("online: last_seq", self.session.acked, "buffered", self.ring.count,
            "encoding", "cbor" if self.session.cbor else "json")
        return True

    def offline(self, err):
        """The attempt or the connection ended: the session says when (and whether) to try again.

        Called at the END of the attempt, so the backoff counts from there.
        """
        ws = self.ws
        self.ws = None
        if ws is not None:
            ws.abort()
        now = clock.up_ms()
        decision = self.ended(err, ws is not None, now)
        if decision.action == R_REFRESH:
            decision = self.refresh_credential(now)
        if decision.action == R_STOP:
            self.fatal = decision.reason
        log("offline:", err, "->", decision.action, decision.delay_ms, "ms;", decision.reason)

    def ended(self, err, connected, now):
        """The session's answer to how the attempt ended: refused (HTTP status and body), closed
        (``connected``: the close code) or the gateway unreachable."""
        session = self.session
        if err.http_status:
            return session.refused(err.http_status, err.http_body, now)
        if connected:
            return session.closed(err.close_code or None, now)
        return session.failed(now)

    def refresh_credential(self, now):
        """The credential provider: config.json, re-read (a new token or JWT may have been uploaded)."""
        token = jwt = None
        if self.config_path is not None:
            try:
                fresh = config_module.load(self.config_path)
                token, jwt = fresh["token"], fresh["jwt"]
            except ConfigError as err:
                log("credential refresh:", err)
        return self.session.refreshed(token, jwt, now)

    def _restore_connection(self, state):
        """After a deep sleep: the session's backoff, reconnect schedule and batch size, and a stop
        if it was for this same credential (the session's state(), saved by sleep_state())."""
        if self.session.restore(state.get("s")) and self.session.stopped:
            self.fatal = "stopped by the gateway; waiting for a new credential"

    def updater(self):
        """The updater, loaded at the first need (an offer, or update work found at boot)."""
        if self.ota is None:
            from ota_agent import OtaAgent

            self.ota = OtaAgent(self.cfg, self.fw, clock.up_ms())
            self.session.ota = self.ota.core
            gc.collect()
        return self.ota

    # -- online work
    def handle(self, text, now):
        """One frame from the gateway; returns the decision's kind."""
        d = self.session.handle(text, now)
        kind = d.kind
        if kind == D_OTA_CHUNK:
            self.ota.write(d.name, d.seq, d.data)
        elif kind == D_COMMAND:
            if d.reply is not None:
                self.ws.send_text(d.reply)
            log("command", d.name, "->", d.ok, d.message)
            if d.name == "ota" and self.ota is not None and self.ota.core.begin_due:
                self.ota.begin()
        elif kind == D_WELCOME and self.ota is not None:
            self.ota.welcome(self, self.ws.send_text)
        elif kind == D_DROP:
            log("gateway refused readings", d.seq, "-", d.last, d.code, d.message)
        elif kind == D_NOTE or kind == D_CLOSING or kind == D_INVALID:
            log("gateway:", kind, d.code, d.message)
        return kind

    def send_status(self, now):
        fields = {"dropped": self.ring.dropped, "buffered": self.ring.count, "fw": self.fw, "kind": "esp32",
                  "boot": self.boot_id, "corrupt": self.ring.corrupt, "rejected": self.ring.rejected,
                  "sensor_failures": self.sensor.failures, "interval_ms": self.adaptive.interval_ms, "up": now,
                  "reset": self.reset}
        for key in ("sensor_errors", "invalid", "ring_errors", "loop_errors"):
            fields[key] = self.counts[key]
        free = heap_free()
        if free is not None:
            fields["heap_free"] = free
        rssi = self.wifi.rssi()
        if rssi is not None:
            fields["rssi"] = rssi
        self.ws.send_text(self.session.status_frame(fields))
        self.status_dropped = self.ring.dropped
        self.status_at_ms = now + max(_STATUS_MIN_MS, self.adaptive.max_ms)

    def pump(self, now):
        """Send the next frame of unacknowledged readings if the window and the rate allow.

        One frame per loop iteration: the gateway's default rate is 10 frames/s,
        and it keeps the transient heap of a step to one batch.
        """
        frame = self.session.next_frame(None, clock.up_ms(), now)
        if frame is not None:
            self.ws.send(frame)  # binary CBOR on an edgewire.v1.cbor connection, else JSON text

    def online_step(self, now, wait):
        ws = self.ws
        text = ws.recv(wait)
        while text is not None:
            self.handle(text, now)
            if self.reboot_requested:
                return
            text = ws.recv(0)
        if self.ws is None:
            return
        if self.ota is not None:
            frame = self.session.ota_frame()
            while frame is not None:  # the update's state, then its next chunk request (one outstanding)
                ws.send_text(frame)
                frame = self.session.ota_frame()
            self.ota.sent()
        now = self.now_ms = clock.up_ms()
        self.pump(now)
        if self.ring.dropped != self.status_dropped or now - self.status_at_ms >= 0:
            self.send_status(now)
        idle = clock.ticks_diff(clock.ticks_ms(), ws.last_rx_ms)
        if idle > _DEAD_IDLE_MS:
            raise NetError("no frame from the gateway for " + str(idle) + " ms")
        if idle > _PING_IDLE_MS and not self.pinged:
            ws.ping()
            self.pinged = True
        elif idle < _PING_IDLE_MS:
            self.pinged = False

    # -- loop
    def step(self):
        """One loop iteration. Raises only for bugs; network errors are handled here."""
        now = self.now_ms = clock.up_ms()
        if now - self.next_sample_ms >= 0:
            self.sample(now)
            now = self.now_ms = clock.up_ms()
        wait = self.next_sample_ms - now
        wait = LOOP_MS if wait > LOOP_MS else (0 if wait < 0 else wait)
        if self.ws is not None and not self.wifi.isconnected():
            self.offline(NetError("wifi lost"))
        if self.ws is None:
            if now - self.next_connect_ms >= 0 and self.session.connect_due(now):
                self.connect(now)
            else:
                clock.sleep_ms(wait)
        else:
            try:
                self.online_step(now, wait)
            except NetError as err:
                self.offline(err)
        if self.reboot_requested:
            self.reboot()
        if self.ota is not None:
            self.ota.tick(self.now_ms, self)
        self.show(self.now_ms)

    def show(self, now):
        if self.fatal is not None:
            mode = "error"
        elif self.ota is not None and self.ota.updating():
            mode = "updating"
        elif self.ws is not None:
            mode = "online"
        elif self.ring.count:
            mode = "buffering"
        else:
            mode = "connecting"
        self.led.set(mode, now)
        self.led.tick(now)

    def reboot(self):
        log("reboot requested")
        if self.ws is not None:
            self.ws.close(wire.CLOSE_GOING_AWAY)
            self.ws = None
        self.ring.close()
        machine.reset()

    def run(self, stop=None):
        """Loop until ``stop()`` is true (tests) or forever (the board)."""
        while stop is None or not stop():
            ok = True
            try:
                self.step()
            except MemoryError:
                ok = False
                self.counts["loop_errors"] += 1
                gc.collect()
                log("out of memory; heap free", heap_free())
            except Exception as err:  # keep sampling; the watchdog resets after repeated failures
                ok = False
                self.counts["loop_errors"] += 1
                log("loop error:", repr(err))
                if self.ws is not None:
                    self.offline(NetError("loop error"))
                clock.sleep_ms(LOOP_MS)
            self.watchdog.progress(ok)

    # -- deep sleep mode
    def wake_once(self):
        """Deep-sleep mode: sample, deliver the ring for a bounded time, then sleep."""
        now = self.now_ms = clock.up_ms()
        self.sample(now)
        self.watchdog.progress(True)
        if self.ring.count and self.session.connect_due(clock.up_ms()) and self.connect(clock.up_ms()):
            start = clock.ticks_ms()
            while self.ws is not None and self.ring.count and \
                    clock.ticks_diff(clock.ticks_ms(), start) < _DEEP_SLEEP_SEND_MS:
                try:
                    self.online_step(clock.up_ms(), LOOP_MS)
                except NetError as err:
                    self.offline(err)
                if self.reboot_requested:
                    self.reboot()
                self.watchdog.progress(True)
            if self.ws is not None:
                self.ws.close()
                self.ws = None
        sleep_ms = self.adaptive.interval_ms
        now = clock.up_ms()
        self.save_sleep_state(now + sleep_ms)
        self.ring.close()
        self.led.set("off", now)
        log("deep sleep", sleep_ms, "ms; buffered", self.ring.count)
        machine.deepsleep(sleep_ms)

    def sleep_state(self, wake_ms):
        """What RTC memory keeps across a deep sleep that ends at uptime ``wake_ms``: the boot id,
        the uptime, the adaptive interval's state and the session's (protocol.device state())."""
        return {"b": self.boot, "u": wake_ms, "a": self.adaptive.state(wake_ms), "s": self.session.state()}

    def save_sleep_state(self, wake_ms):
        try:
            machine.RTC().memory(json.dumps(self.sleep_state(wake_ms)).encode())
        except (AttributeError, OSError, ValueError):
            log("rtc memory unavailable; deep sleep loses adaptive state and the backoff")


def main(path=config_module.PATH):
    """Entry point (main.py). A config error is printed and leaves the board at the REPL."""
    try:
        cfg = config_module.load(path)
    except ConfigError as err:
        print("config error:", err)
        return None
    app = App(cfg, path)
    if cfg["deep_sleep"]:
        app.wake_once()
        return app
    app.run()
    return app
