"""Typed views of the untyped protocol.core (MicroPython-safe, no annotations) for mypy --strict.

Only names; no behaviour. Everything protocol-related still lives in protocol.core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeGuard, cast

from protocol import core


class DeviceSessionT(Protocol):
    """The parts of core.DeviceSession the simulator uses."""

    device_id: str
    acked: int
    sent: int
    in_flight: list[int]
    online: bool
    rate: float
    send_after_ms: int
    max_batch: int
    window: int
    welcome: dict[str, Any] | None
    rejected: int

    def auth_frame(self) -> str | None: ...
    def connection_lost(self) -> None: ...
    def receive(self, text: str) -> tuple[str, Any]: ...
    def can_send(self) -> bool: ...
    def next_frame(self, pending: Iterable[Any], up: int | None = None) -> str | None: ...
    def result_frame(self, command_id: Any, ok: bool, message: str | None = None,
                     data: dict[str, Any] | None = None) -> str: ...
    def status_frame(self, fields: dict[str, Any]) -> str: ...


class GatewaySessionT(Protocol):
    """The parts of core.GatewaySession the test gateway uses."""

    state: int
    device_id: str | None
    last_seq: int
    accepted_seq: int

    def receive(self, frame: str | bytes, now: float) -> Any: ...
    def accept(self, device_id: str, last_seq: int, now_ms: int,
               extra: dict[str, Any] | None = None) -> str: ...
    def refuse(self, code: str, message: str) -> Any: ...
    def close(self, code: str, message: str) -> Any: ...
    def ack(self, seq: int) -> str: ...
    def command_frame(self, command_id: str, name: str, args: dict[str, Any] | None = None) -> str: ...


_new_device_session: Callable[..., Any] = core.DeviceSession
_new_gateway_session: Callable[..., Any] = core.GatewaySession
_new_reading: Callable[..., Any] = core.Reading
is_number = cast(Callable[[object], TypeGuard[int | float]], core.is_number)
metric_range = cast(Callable[[str], tuple[float, float]], core.metric_range)


def device_session(device_id: str, token: str | None = None, jwt: str | None = None, boot: str | None = None,
                   max_batch: int = 20, window: int = 4) -> DeviceSessionT:
    return cast(DeviceSessionT, _new_device_session(device_id, token, jwt, boot, max_batch, window))


def gateway_session(**kwargs: Any) -> GatewaySessionT:
    return cast(GatewaySessionT, _new_gateway_session(**kwargs))


def reading(seq: int, metrics: dict[str, float], ts: int | None = None, up: int | None = None,
            quality: str | None = None) -> Any:
    """A core.Reading (slots: seq, metrics, ts, up, quality)."""
    return _new_reading(seq, metrics, ts, up, quality)
