"""The emulated board's link to its hardware: one synchronous call to the board process.

Every blocking primitive of the board (sleep, socket I/O, poll, Wi-Fi, sensors, watchdog,
resets) is a JSON request written to the board process (simulator/esp32/board.py), which
answers once the operation is done. A Ctrl-C received on UART0 while the app runs is
answered to the pending (or next) call: it raises KeyboardInterrupt here, as the ESP32 port
raises it from its UART interrupt.
"""

import json

import _board


def call(op, **args):
    """One request; returns its value. Raises OSError(errno) or KeyboardInterrupt as answered."""
    args["op"] = op
    reply = json.loads(_board.call(json.dumps(args)))
    if "intr" in reply:
        raise KeyboardInterrupt
    if "err" in reply:
        raise OSError(reply["err"])
    return reply.get("v")
