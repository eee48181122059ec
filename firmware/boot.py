"""Runs first at every reset: quiet the ESP-IDF logs, pick the app slot (slots.py: a trial
boot is counted, and after 3 failed ones the good slot boots again) and put it on sys.path.

Never updated over the air (docs/ota.md): if this file broke, no slot could boot.
"""

import gc

try:
    import esp

    esp.osdebug(None)
except ImportError:  # not an ESP32 build
    pass
try:
    import slots

    slots.activate(slots.choose())
except Exception as err:  # never stop the boot: the good slot, or the root app, still runs
    print("boot: slot choice failed:", repr(err))
gc.collect()
