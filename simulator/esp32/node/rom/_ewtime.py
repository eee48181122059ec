"""``time`` of the emulated ESP32: the port's clock, with sleeps that block in the board process.

The WebAssembly port's own sleeps spin the CPU; these wait without it and let Ctrl-C in.
"""

import _bridge
from utime import gmtime, localtime, mktime, ticks_add, ticks_cpu, ticks_diff, ticks_ms, ticks_us, time, time_ns  # noqa: F401


def sleep_ms(ms):
    if ms > 0:
        _bridge.call("sleep", ms=int(ms))


def sleep_us(us):
    if us >= 1000:
        sleep_ms(us // 1000)


def sleep(seconds):
    sleep_ms(int(seconds * 1000))
