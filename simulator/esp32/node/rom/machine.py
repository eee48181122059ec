"""``machine`` of the emulated ESP32: Pin, WDT, RTC, resets, deep sleep, unique_id.

Resets are done by the board process: it stops this interpreter and boots again (RAM lost,
filesystem kept). The WDT runs there too, so a hung app is reset even if it never calls in.
RTC memory is kept by the board process across deep sleeps and soft resets, not power cuts.
"""

import _bridge

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4


def reset_cause():
    return _bridge.call("reset_cause")


def wake_reason():
    return _bridge.call("wake_reason")


def reset():
    _bridge.call("reset", cause=SOFT_RESET)


def soft_reset():
    raise SystemExit


def deepsleep(ms=0):
    _bridge.call("reset", cause=DEEPSLEEP_RESET, sleep_ms=int(ms))


def lightsleep(ms=0):
    import time

    time.sleep_ms(ms)


def unique_id():
    return bytes(_bridge.call("unique_id"))


def freq(hz=None):
    return 160000000


def idle():
    pass


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if value is not None:
            self.value(value)

    def value(self, level=None):
        if level is None:
            return _bridge.call("pin", pin=self.id)
        _bridge.call("pin", pin=self.id, level=1 if level else 0)

    def __call__(self, level=None):
        return self.value(level)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class WDT:
    """The task watchdog: the board resets (WDT_RESET) unless fed within ``timeout`` ms."""

    def __init__(self, id=0, timeout=5000):
        _bridge.call("wdt", ms=int(timeout))

    def feed(self):
        _bridge.call("wdt")


class RTC:
    def memory(self, data=None):
        if data is None:
            return bytes(_bridge.call("rtc_memory"))
        if len(data) > 2048:
            raise ValueError("RTC memory holds at most 2048 bytes")
        _bridge.call("rtc_memory", data=list(bytes(data)))

    def datetime(self, value=None):
        import time

        if value is not None:
            raise OSError(1)  # the port's clock is the host's: set it with ntptime
        t = time.gmtime()
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
