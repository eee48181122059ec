"""CPython stand-ins for the MicroPython modules the ESP32 firmware imports.

``machine``, ``network``, ``dht``, ``ntptime``, ``utime``, ``micropython``,
``onewire`` and ``ds18x20`` are modules of this package; ``install()``
registers each under its MicroPython name in ``sys.modules``. The runner
(``python -m simulator.micropython_standins.run --fs DIR``) does that, puts DIR
(the simulated flash holding the deployed firmware and ``protocol/``) first on
``sys.path`` and runs the unmodified firmware's ``main.py`` under CPython.

The simulated board is controlled through files in DIR:

* ``sim.json`` (re-read when it changes): ``dht_failure_rate`` (0..1),
  ``heat_c`` (added to the modelled temperature), ``wifi`` (false: no access
  point), ``ntp`` (false: NTP unreachable), ``seed``, ``ds18b20_crc_rate``.
* ``.rtc_memory`` keeps ``machine.RTC().memory()`` across deep sleeps only.

Environment: ``EW_SIM_SPEED`` (simulated ms per real ms, default 1),
``EW_SIM_TICKS_START`` (first ``ticks_ms`` value, to exercise the wrap).
Resets (``machine.reset()``, watchdog, deep sleep) re-execute the process, so
RAM is lost and the flash directory is kept, as on a board.
"""

from __future__ import annotations

import importlib
import sys

MODULES = ("micropython", "utime", "machine", "network", "dht", "ntptime", "onewire", "ds18x20")


def install() -> None:
    """Make ``import machine`` etc. resolve to these stand-ins (one module object each)."""
    for name in MODULES:
        sys.modules[name] = importlib.import_module("simulator.micropython_standins." + name)
