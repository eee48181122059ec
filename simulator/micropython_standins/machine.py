"""Stand-in for MicroPython's ``machine`` on an ESP32: Pin, WDT, RTC, reset, deepsleep.

A reset re-executes the process (RAM lost, flash directory kept). The WDT is
real: a background thread resets the board if ``feed()`` stops for ``timeout``
ms of simulated time. ``deepsleep(ms)`` sleeps (simulated time), keeps RTC
memory and the RTC, then resets with reset_cause() == DEEPSLEEP_RESET.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time as _time
from typing import Any

from simulator.micropython_standins import _simstate, utime

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_RESET_CAUSE = int(os.environ.get("EW_SIM_RESET_CAUSE", str(PWRON_RESET)))

# pin number -> level, shared by every Pin object (tests read the board through it)
PIN_LEVELS: dict[int, int] = {}


def _restart(cause: int, extra_env: dict[str, str] | None = None) -> None:
    env = dict(os.environ, EW_SIM_RESET_CAUSE=str(cause))
    env.pop("EW_SIM_RTC", None)
    if extra_env:
        env.update(extra_env)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def reset_cause() -> int:
    return _RESET_CAUSE


def reset() -> None:
    print("machine.reset()", flush=True)
    _restart(SOFT_RESET)


def soft_reset() -> None:
    _restart(SOFT_RESET)


def deepsleep(ms: int = 0) -> None:
    print(f"machine.deepsleep({ms})", flush=True)
    utime.sleep_ms(ms)
    _restart(DEEPSLEEP_RESET, {"EW_SIM_RTC": repr(utime.rtc_seconds())})


def lightsleep(ms: int = 0) -> None:
    utime.sleep_ms(ms)


def unique_id() -> bytes:
    return b"\x24\x0a\xc4\x00\x00\x01"


def freq(*_args: int) -> int:
    return 240_000_000


def _log_pins() -> None:
    path = _simstate.FS_DIR / ".pins"
    with contextlib.suppress(OSError):
        path.write_text(" ".join(f"{k}={v}" for k, v in sorted(PIN_LEVELS.items())))


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1

    def __init__(self, pin_id: int, mode: int = -1, pull: int = -1, *, value: int | None = None) -> None:
        self.id = pin_id
        self.mode = mode
        if value is not None:
            self.value(value)

    def value(self, level: Any = None) -> int | None:
        if level is None:
            return PIN_LEVELS.get(self.id, 0)
        PIN_LEVELS[self.id] = 1 if level else 0
        _log_pins()
        return None

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)

    def init(self, mode: int = -1, pull: int = -1, *, value: int | None = None) -> None:
        self.mode = mode
        if value is not None:
            self.value(value)

    def __call__(self, level: Any = None) -> int | None:
        return self.value(level)


class WDT:
    """ESP32 task watchdog: resets the board unless fed within ``timeout`` ms."""

    def __init__(self, id: int = 0, timeout: int = 5000) -> None:
        self.timeout_ms = timeout
        self._fed = utime.sim_seconds()
        self._thread = threading.Thread(target=self._watch, name="sim-wdt", daemon=True)
        self._thread.start()

    def feed(self) -> None:
        self._fed = utime.sim_seconds()

    def _watch(self) -> None:
        while True:
            _time.sleep(0.05)
            if (utime.sim_seconds() - self._fed) * 1000 > self.timeout_ms:
                print("WDT: not fed for", self.timeout_ms, "ms; resetting", flush=True)
                _restart(WDT_RESET)


class RTC:
    """The RTC: datetime from the simulated clock, memory() kept only across deep sleep."""

    def memory(self, data: bytes | None = None) -> bytes | None:
        if data is None:
            if _RESET_CAUSE != DEEPSLEEP_RESET:
                return b""
            try:
                return _simstate.RTC_MEMORY.read_bytes()
            except OSError:
                return b""
        if len(data) > 2048:
            raise ValueError("RTC memory holds at most 2048 bytes")
        _simstate.RTC_MEMORY.write_bytes(bytes(data))
        return None

    def datetime(self, value: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        if value is not None:
            y, mo, d, _wd, h, mi, s = value[:7]
            utime.set_rtc(utime.mktime((y, mo, d, h, mi, s)))
            return None
        t = utime.gmtime()
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
