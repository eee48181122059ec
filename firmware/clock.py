"""Uptime and wall-clock time for the firmware.

``up_ms()`` is milliseconds since boot, wrap-safe (ticks_ms wraps after about
12.4 days on MicroPython; the difference is accumulated). ``sync()`` sets the
RTC with NTP; until then readings carry the boot id and uptime, not ``ts``.
After sync, ``epoch_ms_at(up)`` turns an uptime of this boot into Unix ms:
sync_epoch - (uptime_at_sync - up).
"""

import time

if not hasattr(time, "ticks_ms"):  # CPython host: simulator stand-in with MicroPython's time API
    import utime as time

ticks_ms = time.ticks_ms
ticks_diff = time.ticks_diff
sleep_ms = time.sleep_ms

# MicroPython bare-metal ports count from 2000-01-01, unix/webassembly from 1970.
EPOCH_OFFSET_S = 946684800 if time.gmtime(0)[0] == 2000 else 0
VALID_AFTER_S = 1700000000  # a clock before Nov 2023 has never been set

_last = ticks_ms()
_up = 0


def up_ms():
    """Milliseconds since boot (call at least once per ticks period; the main loop does)."""
    global _last, _up
    now = ticks_ms()
    _up += ticks_diff(now, _last)
    _last = now
    return _up


def resume(up):
    """Continue uptime from ``up`` ms (after a deep sleep, so one boot id spans the sleeps)."""
    global _last, _up
    _last = ticks_ms()
    _up = up


def unix_ms():
    """Unix time in ms if the RTC is set (NTP now or before a deep sleep), else None."""
    if hasattr(time, "time_ns"):
        ms = time.time_ns() // 1000000 + EPOCH_OFFSET_S * 1000
    else:
        ms = int(time.time() + EPOCH_OFFSET_S) * 1000
    if ms < VALID_AFTER_S * 1000:
        return None
    return ms


class Clock:
    """Tracks whether wall time is known and converts uptimes of this boot to Unix ms."""

    def __init__(self, ntp_host=None):
        self.ntp_host = ntp_host
        self.offset = None  # unix_ms - up_ms, once known
        self.failures = 0
        self._check()

    def _check(self):
        now = unix_ms()
        if now is not None:
            self.offset = now - up_ms()
        return self.offset is not None

    def synced(self):
        return self.offset is not None

    def sync(self):
        """One NTP attempt; True once the clock is valid. Never raises."""
        if self.offset is not None:
            return True
        try:
            import ntptime

            if self.ntp_host:
                ntptime.host = self.ntp_host
            ntptime.settime()
        except Exception:  # OSError (timeout, DNS) or anything the stack throws
            self.failures += 1
            return False
        return self._check()

    def epoch_ms_at(self, up):
        """Unix ms for uptime ``up`` of this boot, or None before sync."""
        if self.offset is None:
            return None
        return self.offset + up
