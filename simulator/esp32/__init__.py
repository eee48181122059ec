"""Emulated ESP32 board: esptool's serial bootloader protocol, then a MicroPython raw REPL.

`python -m simulator esp32 --port PORT --state DIR` (or `python -m simulator.esp32`) listens on
127.0.0.1:PORT; esptool and mpremote reach it as the pyserial URL socket://127.0.0.1:PORT.
See simulator/esp32/board.py for the model (reset, modes, flash, filesystem).
"""
