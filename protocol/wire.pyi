# Type stub for protocol/wire.py, which stays annotation-free so MicroPython can run it.
# `make lint` checks it against the module with mypy.stubtest.
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

PROTOCOL_VERSION: int
SUBPROTOCOL_JSON: str
SUBPROTOCOL_CBOR: str
T_AUTH: str
T_WELCOME: str
T_DATA: str
T_ACK: str
T_ERROR: str
T_SLOW: str
T_CMD: str
T_RESULT: str
T_STATUS: str
T_OTA: str
T_OTA_GET: str
T_OTA_CHUNK: str
E_BAD_JSON: str
E_BAD_CBOR: str
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
E_TAKEOVER: str
E_TOO_MANY_ERRORS: str
E_NO_SUCH_COMMAND: str
E_OTA_UNKNOWN: str
E_BAD_REQUEST: str
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
METRICS: dict[str, tuple[str, float, float, str | None, str]]
GENERIC_RANGE: tuple[float, float]
METRIC_IDS: tuple[str, ...]
MAX_FRAME_BYTES: int
MAX_BATCH: int
MAX_METRICS: int
MAX_NAME: int
MAX_TEXT: int
MAX_SEQ: int
DEFAULT_RATE: float
DEFAULT_BURST: float
DEVICE_TOKEN_PREFIX: str

_Loads = Callable[[str | bytes], Any]
_Dumps = Callable[[Any], str]

class ProtocolError(ValueError):
    code: str
    message: str
    def __init__(self, code: str, message: str) -> None: ...
    def close_code(self) -> int: ...

def is_number(value: object) -> TypeGuard[int | float]: ...
def is_finite(value: float) -> bool: ...
def spelled_with(text: object, alphabet: str, longest: int) -> bool: ...
def valid_device_id(text: object) -> bool: ...
def is_device_token(credential: object) -> bool: ...
def valid_metric_name(text: object) -> bool: ...
_Table = dict[str, tuple[str, float, float, str | None, str]]

def metric_range(name: str, table: _Table | None = None) -> tuple[float, float]: ...
def encode(msg: dict[str, Any]) -> str: ...
def decode(
    text: str | bytes | bytearray | memoryview, loads: _Loads | None = None, max_bytes: int = ...
) -> dict[str, Any]: ...

class Reading:
    seq: int
    metrics: dict[str, float]
    ts: int | None
    up: int | None
    quality: str | None
    def __init__(
        self,
        seq: int,
        metrics: dict[str, float],
        ts: int | None = None,
        up: int | None = None,
        quality: str | None = None,
    ) -> None: ...
    def to_wire(self) -> dict[str, Any]: ...

class DataFrame:
    seq: int
    boot: str | None
    up: int | None
    readings: list[Reading]
    device_id: str | None
    def __init__(
        self, seq: int, boot: str | None, up: int | None, readings: list[Reading], device_id: str | None = None
    ) -> None: ...
    @property
    def last_seq(self) -> int: ...

def batch_too_large(count: int, max_batch: int) -> ProtocolError: ...
def parse_data(msg: dict[str, Any], max_batch: int = ..., table: _Table | None = None) -> DataFrame: ...
def data_message(
    seq: int, readings: Iterable[Reading], boot: str | None = None, up: int | None = None
) -> dict[str, Any]: ...
def reading_time_ms(reading: Reading, frame: DataFrame, received_ms: int) -> int: ...
def error_message(code: str, message: str, seq: int | None = None) -> dict[str, Any]: ...

# commands (docs/protocol.md section 8)
ARG_NUMBER: str
ARG_METRIC: str
ARG_NAME: str
ARG_BOOL: str
ARG_TEXT: str
MAX_COMMAND_TEXT: int
MAX_INTERVAL_S: int
COMMANDS: dict[str, tuple[str, tuple[tuple[str, str, bool], ...], Callable[[dict[str, Any]], str | None] | None]]

def parse_command(name: object, args: object) -> dict[str, Any]: ...
