"""MicroPython-side stand-in for ``machine`` (the WebAssembly port has none)."""

PWRON_RESET = 1
DEEPSLEEP_RESET = 4
LEVELS = {}
FEEDS = [0]


class Pin:
    IN = 1
    OUT = 3

    def __init__(self, pin_id, mode=-1, pull=-1, value=None):
        self.id = pin_id
        if value is not None:
            self.value(value)

    def value(self, level=None):
        if level is None:
            return LEVELS.get(self.id, 0)
        LEVELS[self.id] = 1 if level else 0


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        FEEDS[0] += 1


class RTC:
    _memory = b""

    def memory(self, data=None):
        if data is None:
            return RTC._memory
        RTC._memory = bytes(data)


class ResetCalled(Exception):
    pass


def reset_cause():
    return PWRON_RESET


def reset():
    raise ResetCalled()


def deepsleep(ms=0):
    raise ResetCalled()
