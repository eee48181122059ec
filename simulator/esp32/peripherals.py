"""What surrounds the emulated ESP32's MicroPython: Wi-Fi, sensor, pins, RTC, watchdog, sockets.

The board's modules (node/rom/*.py: machine, network, socket, select, time, dht, esp) send one
JSON request per blocking call over a pipe; ``Peripherals.handle`` answers it when the
operation is done: ``{"v": value}``, ``{"err": errno}`` (OSError on the board) or
``{"intr": 1}`` (Ctrl-C arrived on UART0: KeyboardInterrupt on the board).

The world around the board is ``world.json`` in its state directory, re-read when it changes:

* ``ap``: the access point, ``{"ssid": ..., "password": ...}``, or null (none in range);
* ``link``: false drops a connected station (beacon timeout); ``rssi``;
* ``dht``: ``{"kind": "DHT22", "failure_rate": 0.0, "heat_c": 0.0, "hang_ms": 0, "seed": 1}``, the
  sensor on every pin, with simulator.hardware.dht's physics (read interval, warm-up, lost and
  flipped bits); ``heat_c`` is added to the climate's temperature; ``hang_ms`` makes each read
  block that long (a wedged bus).
* ``ds18b20``: ``{"present": true, "crc_rate": 0.0, "seed": 1}``, a DS18B20 on every 1-Wire bus,
  on simulator.sensors' temperature model plus ``dht.heat_c``: 85.0 before the first conversion,
  CRC errors at ``crc_rate``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from simulator.esp32.sockets import ETIMEDOUT, SocketError, SocketTable, resolve
from simulator.hardware.dht import DHTModel, DHTNoResponse, HeatedEnv
from simulator.sensors import SensorModel, make_sensor

# machine.reset_cause() values of the ESP32 port
PWRON_RESET = 1
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
TIMER_WAKE = 4
# network.WLAN.status() values of the ESP32 port
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
ASSOCIATE_S = 0.3  # association + DHCP
IFCONFIG = ["192.168.4.23", "255.255.255.0", "192.168.4.1", "192.168.4.1"]
NO_IP = ["0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0"]
DS18B20_ROM = [0x28, 0xFF, 0x64, 0x1E, 0x0F, 0x00, 0x00, 0x5A]
DS18B20_POWER_ON_C = 85.0


class World:
    """world.json, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1
        self._data: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return self._data
        if mtime != self._mtime:
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return self._data
            self._data = loaded if isinstance(loaded, dict) else {}
            self._mtime = mtime
        return self._data


class Station:
    """The ESP32's Wi-Fi station against the world's access point."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.active = False
        self.ssid: str | None = None
        self.key: str | None = None
        self.since = 0.0

    def status(self) -> int:
        if not self.active or self.ssid is None:
            return STAT_IDLE
        if time.monotonic() - self.since < ASSOCIATE_S:
            return STAT_CONNECTING
        world = self.world.get()
        ap = world.get("ap")
        if not isinstance(ap, dict) or ap.get("ssid") != self.ssid:
            return STAT_NO_AP_FOUND
        if (ap.get("password") or "") != (self.key or ""):
            return STAT_WRONG_PASSWORD
        if world.get("link") is False:
            return STAT_BEACON_TIMEOUT
        return STAT_GOT_IP

    def call(self, fn: str, req: dict[str, Any]) -> Any:
        if fn == "active":
            if req.get("on") is not None:
                self.active = bool(req["on"])
                if not self.active:
                    self.ssid = None
            return self.active
        if fn == "connect":
            if not self.active:
                raise SocketError(-1)  # OSError: Wifi Not Started (ESP_ERR_WIFI_NOT_STARTED)
            self.ssid, self.key, self.since = req.get("ssid"), req.get("key"), time.monotonic()
            return None
        if fn == "disconnect":
            self.ssid = None
            return None
        if fn == "isconnected":
            return self.status() == STAT_GOT_IP
        if fn == "status":
            if req.get("param") == "rssi":
                return int(self.world.get().get("rssi", -61))
            return self.status()
        if fn == "ifconfig":
            return IFCONFIG if self.status() == STAT_GOT_IP else NO_IP
        raise SocketError(22)


class Peripherals:
    """Answers the board's requests for one boot (sockets, station and watchdog start afresh)."""

    def __init__(self, world: World, mac: bytes, reset_cause: int, rtc_memory: bytearray,
                 reset: Callable[[int, int], None], interrupted: asyncio.Event,
                 sensors: dict[int, DHTModel]) -> None:
        self.world = world
        self.mac = mac
        self.reset_cause = reset_cause
        self.rtc_memory = rtc_memory  # the board's: kept across resets, lost at power-off
        self._reset = reset
        self.interrupted = interrupted
        self.sensors = sensors  # the board's: the sensors stay powered across resets
        self.sockets = SocketTable()
        self.station = Station(world)
        self.pins: dict[int, int] = {}
        self.converted: set[int] = set()  # buses whose DS18B20 converted since power-on
        self.thermometers: dict[int, SensorModel] = {}
        self.rng = random.Random(1)
        self.wdt_ms: int | None = None
        self.wdt_fed = 0.0
        self.app_running = True
        self.calls = 0

    async def handle(self, line: bytes) -> dict[str, Any]:
        """One request line -> its reply."""
        self.calls += 1
        try:
            req = json.loads(line)
            op = req.pop("op")
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"err": 22}
        if op in ("boot", "repl"):  # the interpreter (re)started, with or without the app; the app ended
            if op == "boot":
                self.sockets.close_all()
            self.app_running = op == "boot" and bool(req.get("app"))
            self.interrupted.clear()
            return {"v": None}
        try:
            return {"v": await self._interruptible(self._dispatch(op, req))}
        except SocketError as exc:
            return {"err": exc.errno}
        except _Interrupted:
            return {"intr": 1}
        except (KeyError, ValueError, TypeError):  # a malformed request: EINVAL on the board
            return {"err": 22}

    async def _interruptible(self, work: Awaitable[Any]) -> Any:
        """Run ``work``; while the app runs, a Ctrl-C on UART0 ends it with _Interrupted."""
        if not self.app_running:
            return await work
        if self.interrupted.is_set():
            self.interrupted.clear()
            if asyncio.iscoroutine(work):
                work.close()
            raise _Interrupted
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.interrupted.wait())
        done, _pending = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task in done:
            return task.result()
        task.cancel()
        self.interrupted.clear()
        raise _Interrupted

    def interrupt(self) -> None:
        """Ctrl-C on UART0: stops the app at its pending or next call (not the REPL's own commands)."""
        if self.app_running:
            self.interrupted.set()

    async def _dispatch(self, op: str, req: dict[str, Any]) -> Any:
        if op == "sleep":
            await asyncio.sleep(max(0, int(req.get("ms", 0))) / 1000)
            return None
        if op == "poll":
            return await self.sockets.poll([int(i) for i in req["ids"]], int(req["ms"]))
        if op == "sock_new":
            return self.sockets.new()
        if op == "sock_connect":
            if not self.station.status() == STAT_GOT_IP:
                raise SocketError(113)  # EHOSTUNREACH: no network
            await self.sockets.connect(int(req["id"]), str(req["host"]), int(req["port"]), int(req["ms"]))
            return None
        if op == "sock_send":
            return self.sockets.send(int(req["id"]), bytes.fromhex(req["data"]))
        if op == "sock_recv":
            return (await self.sockets.recv(int(req["id"]), int(req["n"]), int(req["ms"]))).hex()
        if op == "sock_close":
            self.sockets.close(int(req["id"]))
            return None
        if op == "resolve":
            if self.station.status() != STAT_GOT_IP:
                raise SocketError(-202)
            return resolve(str(req["host"]))
        if op == "wlan":
            return self.station.call(str(req["fn"]), req)
        if op == "dht":
            return await self._dht(int(req["pin"]))
        if op == "onewire":
            return await self._onewire(int(req["pin"]), str(req["fn"]))
        if op == "pin":
            pin = int(req["pin"])
            if "level" in req:
                self.pins[pin] = int(req["level"])
                return None
            return self.pins.get(pin, 0)
        if op == "wdt":
            if "ms" in req:
                self.wdt_ms = max(1, int(req["ms"]))
            self.wdt_fed = time.monotonic()
            return None
        if op == "rtc_memory":
            if "data" in req:
                self.rtc_memory[:] = bytes(req["data"])
                return None
            return list(self.rtc_memory)
        if op == "reset_cause":
            return self.reset_cause
        if op == "wake_reason":
            return TIMER_WAKE if self.reset_cause == DEEPSLEEP_RESET else 0
        if op == "unique_id":
            return list(self.mac)
        if op == "reset":
            self._reset(int(req.get("cause", SOFT_RESET)), int(req.get("sleep_ms", 0)))
            await asyncio.Event().wait()  # the board stops this interpreter
        raise SocketError(22)

    async def _dht(self, pin: int) -> list[int]:
        cfg = self.world.get().get("dht") or {}
        hang = int(cfg.get("hang_ms", 0))
        if hang > 0:
            await asyncio.sleep(hang / 1000)
        model = self.sensors.get(pin)
        if model is None:
            seed = int(cfg.get("seed", 1))
            model = DHTModel(str(cfg.get("kind", "DHT22")), seed=seed, failure_rate=0.0,
                             env=HeatedEnv(make_sensor("climate", seed), self._heat))
            self.sensors[pin] = model
        model.failure_rate = float(cfg.get("failure_rate", 0.0))
        await asyncio.sleep(0.005)  # the bus transaction
        try:
            return list(model.read())
        except DHTNoResponse:
            raise SocketError(ETIMEDOUT) from None

    async def _onewire(self, pin: int, fn: str) -> Any:
        cfg = self.world.get().get("ds18b20") or {}
        present = cfg.get("present", True) is not False
        if fn == "scan":
            return [DS18B20_ROM] if present else []
        if not present:
            raise SocketError(ETIMEDOUT)  # nobody pulls the bus low: the driver's reads fail
        if fn == "convert":
            self.converted.add(pin)
            return None
        if pin not in self.converted:
            return DS18B20_POWER_ON_C
        model = self.thermometers.get(pin)
        if model is None:
            model = self.thermometers[pin] = make_sensor("temperature", int(cfg.get("seed", 1)))
        if self.rng.random() < float(cfg.get("crc_rate", 0.0)):
            return None  # a corrupted scratchpad: the driver raises "CRC error"
        value = model.sample(time.time())["temperature"] + self._heat()
        return round(value * 16) / 16  # 12-bit resolution

    def _heat(self) -> float:
        return float((self.world.get().get("dht") or {}).get("heat_c", 0.0))

    def wdt_expired(self) -> bool:
        return self.wdt_ms is not None and (time.monotonic() - self.wdt_fed) * 1000 > self.wdt_ms

    def close(self) -> None:
        self.sockets.close_all()


class _Interrupted(Exception):
    """Ctrl-C arrived while the request waited."""
