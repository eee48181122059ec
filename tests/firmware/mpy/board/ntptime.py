"""MicroPython-side stand-in for ``ntptime``: the WebAssembly port's clock is already set."""

host = "pool.ntp.org"


def settime():
    pass
