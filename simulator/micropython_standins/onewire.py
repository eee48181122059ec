"""Stand-in for MicroPython's ``onewire``: a bus object holding its pin."""

from __future__ import annotations


class OneWireError(Exception):
    pass


class OneWire:
    def __init__(self, pin: object) -> None:
        self.pin = pin

    def scan(self) -> list[bytearray]:
        return [bytearray(b"\x28\xff\x64\x1e\x0f\x00\x00\x5a")]

    def reset(self, required: bool = False) -> bool:
        return True
