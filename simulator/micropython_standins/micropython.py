"""Stand-in for MicroPython's ``micropython`` module (const and a few no-ops)."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def const(value: T) -> T:
    return value


def mem_info(*_args: object) -> None:
    print("mem_info: not available on the CPython stand-in")


def opt_level(*_args: object) -> int:
    return 0
