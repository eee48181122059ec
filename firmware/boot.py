"""Runs first at every reset: quiet the ESP-IDF logs and leave the rest to main.py."""

import gc

try:
    import esp

    esp.osdebug(None)
except ImportError:  # not an ESP32 build
    pass
gc.collect()
