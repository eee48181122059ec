# Type stub for protocol/device.py (annotation-free for MicroPython); checked by mypy.stubtest.
from collections.abc import Iterable
from typing import Any

from protocol.wire import Reading, _Dumps, _Loads

DEV_WELCOME: str
DEV_ACK: str
DEV_CMD: str
DEV_SLOW: str
DEV_ERROR: str

class DeviceSession:
    device_id: str
    token: str | None
    jwt: str | None
    boot: str | None
    max_batch: int
    window: int
    acked: int
    sent: int
    in_flight: list[int]
    online: bool
    rate: float
    send_after_ms: int
    welcome: dict[str, Any] | None
    rejected: int
    def __init__(
        self,
        device_id: str,
        token: str | None = None,
        jwt: str | None = None,
        boot: str | None = None,
        max_batch: int = 20,
        window: int = 4,
        loads: _Loads | None = None,
        dumps: _Dumps | None = None,
    ) -> None: ...
    def auth_frame(self) -> str | None: ...
    def connection_lost(self) -> None: ...
    def receive(self, text: str | bytes) -> tuple[str, Any]: ...
    def can_send(self) -> bool: ...
    def next_frame(self, pending: Iterable[Reading], up: int | None = None) -> str | None: ...
    def result_frame(self, command_id: Any, ok: bool, message: str | None = None, data: Any = None) -> str: ...
    def status_frame(self, fields: dict[str, Any]) -> str: ...
