"""Stand-in for MicroPython's ``ntptime``: settime() sets the simulated RTC from the host clock.

``"ntp": false`` in sim.json makes it fail like an unreachable server (OSError ETIMEDOUT).
"""

from __future__ import annotations

import errno
import time as _time

from simulator.micropython_standins import _simstate, utime

host = "pool.ntp.org"
timeout = 1


def time() -> int:
    if not _simstate.setting("ntp", True):
        raise OSError(errno.ETIMEDOUT, "ETIMEDOUT")
    return int(_time.time()) - utime.EPOCH_2000


def settime() -> None:
    utime.set_rtc(time())
