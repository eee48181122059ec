"""Exceptions of the emulated ESP32 board (one tree; each also inherits the matching built-in)."""

from __future__ import annotations


class BoardError(Exception):
    """Base class of every error raised by simulator.esp32."""


class StateError(BoardError, OSError):
    """The state directory (flash.bin, board.json, fs/) is unusable: check path and permissions."""


class AppError(BoardError, RuntimeError):
    """The MicroPython application (Node.js + WebAssembly) cannot run: check node and npm ci."""
