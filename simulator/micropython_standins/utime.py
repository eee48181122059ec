"""Stand-in for MicroPython's ``time``/``utime``: ticks that wrap like a board's, an RTC
that starts at 2000-01-01 (the ESP32 epoch) until NTP or a deep sleep sets it.

Simulated time runs ``EW_SIM_SPEED`` times faster than the host clock.
"""

from __future__ import annotations

import os
import time as _time

TICKS_PERIOD = 1 << 30  # MicroPython's ticks_ms wraps at 2**30
EPOCH_2000 = 946684800
SPEED = float(os.environ.get("EW_SIM_SPEED", "1"))
_T0 = _time.monotonic()
_TICKS_START = int(os.environ.get("EW_SIM_TICKS_START", "0"))
# RTC seconds since 2000 at boot (kept across deep sleep by the runner's environment)
_rtc_at_boot = float(os.environ.get("EW_SIM_RTC", "0"))


def sim_seconds() -> float:
    """Simulated seconds since this boot (never wraps)."""
    return (_time.monotonic() - _T0) * SPEED


def ticks_ms() -> int:
    return (_TICKS_START + int(sim_seconds() * 1000)) % TICKS_PERIOD


def ticks_us() -> int:
    return (_TICKS_START * 1000 + int(sim_seconds() * 1_000_000)) % TICKS_PERIOD


def ticks_add(ticks: int, delta: int) -> int:
    return (ticks + delta) % TICKS_PERIOD


def ticks_diff(end: int, start: int) -> int:
    half = TICKS_PERIOD // 2
    return ((end - start + half) % TICKS_PERIOD) - half


def sleep_ms(ms: float) -> None:
    if ms > 0:
        _time.sleep(ms / 1000 / SPEED)


def sleep_us(us: float) -> None:
    if us > 0:
        _time.sleep(us / 1_000_000 / SPEED)


def sleep(seconds: float) -> None:
    if seconds > 0:
        _time.sleep(seconds / SPEED)


def time() -> int:
    """RTC seconds since 2000-01-01 (integer, as on the ESP32)."""
    return int(_rtc_at_boot + sim_seconds())


def time_ns() -> int:
    return int((_rtc_at_boot + sim_seconds()) * 1e9)


def set_rtc(seconds_since_2000: float) -> None:
    """What ntptime.settime() does on a board."""
    global _rtc_at_boot
    _rtc_at_boot = seconds_since_2000 - sim_seconds()


def rtc_seconds() -> float:
    return _rtc_at_boot + sim_seconds()


def gmtime(secs: float | None = None) -> tuple[int, ...]:
    value = _rtc_at_boot + sim_seconds() if secs is None else secs
    t = _time.gmtime(int(value) + EPOCH_2000)
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday, t.tm_yday)


localtime = gmtime


def mktime(parts: tuple[int, ...]) -> int:
    import calendar

    return int(calendar.timegm((*parts[:6], 0, 0, 0))) - EPOCH_2000
