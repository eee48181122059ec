"""Start-up of the emulated ESP32 after a reset: what the ESP32 port's main.c does.

Installs the board's modules under their ESP32 names (``time``, ``select`` and ``socket``
replace the WebAssembly port's own: its sleeps spin the CPU and it has no sockets), then
runs boot.py and main.py from the filesystem. An exception ends the script with its
traceback on UART0, as on the board; the REPL follows.
"""

import gc
import sys

import _ewselect as _select
import _ewtime as _time

sys.modules["time"] = _time
sys.modules["utime"] = _time
sys.modules["select"] = _select
sys.modules["uselect"] = _select


def run(name):
    """Run one script from the filesystem; False if it ended with an exception (or Ctrl-C)."""
    try:
        with open(name) as f:
            source = f.read()
    except OSError:
        return True
    try:
        code = compile(source, name, "exec")
        source = None
        exec(code, {"__name__": "__main__", "__file__": name})
    except SystemExit:
        return True
    except BaseException as e:  # KeyboardInterrupt included: printed, then the REPL
        sys.print_exception(e)
        return False
    finally:
        gc.collect()
    return True
