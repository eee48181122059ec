# Type stub for protocol/gateway.py (annotation-free for MicroPython); checked by mypy.stubtest.
from typing import Any

from protocol.wire import _Dumps, _Loads

ST_AWAIT_AUTH: int
ST_ACTIVE: int
ST_CLOSED: int
EV_AUTH: str
EV_DATA: str
EV_RESULT: str
EV_STATUS: str
EV_REJECT: str
EV_THROTTLE: str
EV_CLOSE: str
EV_OTA_GET: str
EV_OTA_STATE: str
OTA_MAX_CHUNK: int
OTA_STATES: tuple[str, ...]
OTA_REASONS: tuple[str, ...]
MAX_OTA_OFFSET: int

def valid_release_id(text: object) -> bool: ...
def parse_ota_get(msg: dict[str, Any]) -> dict[str, Any]: ...
def parse_ota_state(msg: dict[str, Any]) -> dict[str, Any]: ...

MAX_STATUS_FIELDS: int
MAX_STATUS_DEPTH: int
MAX_STATUS_VALUES: int
MAX_STATUS_BYTES: int
MAX_RESULT_DEPTH: int
MAX_RESULT_VALUES: int
MAX_RESULT_BYTES: int
MAX_FUTURE_MS: int
MAX_PENDING_COMMANDS: int

def json_shape_error(value: object, max_depth: int, max_values: int) -> str | None: ...

class TokenBucket:
    rate: float
    burst: float
    tokens: float
    stamp: float
    def __init__(self, rate: float, burst: float, now: float) -> None: ...
    def take(self, now: float, cost: float = 1.0) -> bool: ...
    def wait_ms(self, cost: float = 1.0) -> int: ...

class Event:
    kind: str
    payload: Any
    reply: str | None
    close_code: int
    def __init__(self, kind: str, payload: Any = None, reply: str | None = None, close_code: int = 0) -> None: ...

class GatewaySession:
    state: int
    device_id: str | None
    last_seq: int
    accepted_seq: int
    gaps: int
    last_gap: int
    hold_from: int
    max_batch: int
    max_frame: int
    bucket: TokenBucket
    strikes: int
    rate_strikes: int
    bad_frames: int
    throttled: int
    duplicates: int
    commands: dict[str, bool]
    max_future_ms: int
    cbor: bool
    table: dict[str, tuple[str, float, float, str | None, str]] | None
    def __init__(
        self,
        rate: float = ...,
        burst: float = ...,
        now: float = 0.0,
        max_batch: int = ...,
        max_frame: int = ...,
        loads: _Loads | None = None,
        dumps: _Dumps | None = None,
        max_strikes: int = 10,
        rate_strikes: int = 40,
        max_future_ms: int = ...,
        cbor: bool = False,
        table: dict[str, tuple[str, float, float, str | None, str]] | None = None,
    ) -> None: ...
    def frame(self, msg: dict[str, Any]) -> str: ...
    def error_frame(self, code: str, message: str, seq: int | None = None) -> str: ...
    def accept(self, device_id: str, last_seq: int, now_ms: int, extra: dict[str, Any] | None = None) -> str: ...
    def refuse(self, code: str, message: str) -> Event: ...
    def close(self, code: str, message: str) -> Event: ...
    def ack(self, seq: int) -> str: ...
    def command_frame(self, command_id: str, name: str, args: dict[str, Any] | None = None) -> str: ...
    def receive(self, frame: str | bytes | bytearray | memoryview, now: float, wall_ms: int | None = None) -> Event: ...
    def ota_chunk(self, release: str, name: str, off: int, data: bytes, size: int) -> str: ...
