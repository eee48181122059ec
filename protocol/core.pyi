# Type stub for protocol/core.py, which stays annotation-free so MicroPython can run it.
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

PROTOCOL_VERSION: int
T_AUTH: str
T_WELCOME: str
T_DATA: str
T_ACK: str
T_ERROR: str
T_SLOW: str
T_CMD: str
T_RESULT: str
T_STATUS: str
E_BAD_JSON: str
E_BAD_FRAME: str
E_BAD_VALUE: str
E_TOO_LARGE: str
E_UNKNOWN_TYPE: str
E_BINARY: str
E_AUTH_REQUIRED: str
E_AUTH_FAILED: str
E_AUTH_TIMEOUT: str
E_DISABLED: str
E_EXPIRED: str
E_ADDRESS: str
E_IDENTITY: str
E_RATE: str
E_REPLACED: str
E_SHUTDOWN: str
E_STORAGE: str
E_TOO_MANY_ERRORS: str
CLOSE_NORMAL: int
CLOSE_GOING_AWAY: int
CLOSE_POLICY: int
CLOSE_TOO_BIG: int
CLOSE_INTERNAL: int
CLOSE_SERVICE_RESTART: int
CLOSE_TRY_AGAIN_LATER: int
CLOSE_TOO_MANY_ERRORS: int
CLOSE_AUTH_FAILED: int
CLOSE_AUTH_TIMEOUT: int
CLOSE_DISABLED: int
CLOSE_EXPIRED: int
CLOSE_REPLACED: int
CLOSE_ADDRESS: int
CLOSE_IDENTITY: int
CLOSE_RATE_LIMITED: int
CLOSE_AUTH_REQUIRED: int
CLOSE_FOR_ERROR: dict[str, int]
QUALITY_OK: str
QUALITY_RETRIED: str
QUALITY_SUSPECT: str
QUALITY_STALE: str
QUALITIES: tuple[str, ...]
METRICS: dict[str, tuple[str, float, float]]
GENERIC_RANGE: tuple[float, float]
MAX_FRAME_BYTES: int
MAX_BATCH: int
MAX_METRICS: int
MAX_NAME: int
MAX_TEXT: int
MAX_SEQ: int
DEFAULT_RATE: float
DEFAULT_BURST: float
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
DEV_WELCOME: str
DEV_ACK: str
DEV_CMD: str
DEV_SLOW: str
DEV_ERROR: str

Loads = Callable[[str | bytes], Any]
Dumps = Callable[[Any], str]

class ProtocolError(ValueError):
    code: str
    message: str
    def __init__(self, code: str, message: str) -> None: ...
    def close_code(self) -> int: ...

def is_number(value: object) -> TypeGuard[int | float]: ...
def is_finite(value: float) -> bool: ...
def valid_device_id(text: object) -> bool: ...
def valid_metric_name(text: object) -> bool: ...
def metric_range(name: str) -> tuple[float, float]: ...
def encode(msg: dict[str, Any]) -> str: ...
def decode(text: str | bytes | bytearray | memoryview, loads: Loads | None = None,
           max_bytes: int = ...) -> dict[str, Any]: ...

class Reading:
    seq: int
    metrics: dict[str, float]
    ts: int | None
    up: int | None
    quality: str | None
    def __init__(self, seq: int, metrics: dict[str, float], ts: int | None = None, up: int | None = None,
                 quality: str | None = None) -> None: ...
    def to_wire(self) -> dict[str, Any]: ...

class DataFrame:
    seq: int
    boot: str | None
    up: int | None
    readings: list[Reading]
    device_id: str | None
    def __init__(self, seq: int, boot: str | None, up: int | None, readings: list[Reading],
                 device_id: str | None = None) -> None: ...
    @property
    def last_seq(self) -> int: ...

def parse_data(msg: dict[str, Any], max_batch: int = ...) -> DataFrame: ...
def data_message(seq: int, readings: Iterable[Reading], boot: str | None = None,
                 up: int | None = None) -> dict[str, Any]: ...
def reading_time_ms(reading: Reading, frame: DataFrame, received_ms: int) -> int: ...
def error_message(code: str, message: str, seq: int | None = None) -> dict[str, Any]: ...

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
    hold_from: int
    max_batch: int
    max_frame: int
    bucket: TokenBucket
    strikes: int
    rate_strikes: int
    bad_frames: int
    throttled: int
    duplicates: int
    def __init__(self, rate: float = ..., burst: float = ..., now: float = 0.0, max_batch: int = ...,
                 max_frame: int = ..., loads: Loads | None = None, dumps: Dumps | None = None,
                 max_strikes: int = 10, rate_strikes: int = 40) -> None: ...
    def frame(self, msg: dict[str, Any]) -> str: ...
    def error_frame(self, code: str, message: str, seq: int | None = None) -> str: ...
    def accept(self, device_id: str, last_seq: int, now_ms: int, extra: dict[str, Any] | None = None) -> str: ...
    def refuse(self, code: str, message: str) -> Event: ...
    def close(self, code: str, message: str) -> Event: ...
    def ack(self, seq: int) -> str: ...
    def command_frame(self, command_id: str, name: str, args: dict[str, Any] | None = None) -> str: ...
    def receive(self, frame: str | bytes, now: float) -> Event: ...

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
    def __init__(self, device_id: str, token: str | None = None, jwt: str | None = None, boot: str | None = None,
                 max_batch: int = 20, window: int = 4, loads: Loads | None = None,
                 dumps: Dumps | None = None) -> None: ...
    def auth_frame(self) -> str | None: ...
    def connection_lost(self) -> None: ...
    def receive(self, text: str | bytes) -> tuple[str, Any]: ...
    def can_send(self) -> bool: ...
    def next_frame(self, pending: Iterable[Reading], up: int | None = None) -> str | None: ...
    def result_frame(self, command_id: Any, ok: bool, message: str | None = None, data: Any = None) -> str: ...
    def status_frame(self, fields: dict[str, Any]) -> str: ...
