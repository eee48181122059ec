# Type stub for protocol/cbor.py, which stays annotation-free so MicroPython can run it.
# `make lint` checks it against the module with mypy.stubtest.
from collections.abc import Sequence
from typing import Any

from protocol.wire import ProtocolError, Reading

MAX_DEPTH: int
MAX_PLACES: int
INT_COLUMN: int
QUALITY_CODES: tuple[str | None, ...]
COLUMN_KEYS: tuple[str, ...]

def dumps(value: Any) -> bytes: ...
def encode_data(
    seq: int, readings: Sequence[Reading], boot: str | None = None, up: int | None = None
) -> bytearray | None: ...
def loads(data: bytes | bytearray | memoryview) -> Any: ...
def decode_frame(data: bytes | bytearray | memoryview, max_bytes: int = ...) -> dict[str, Any]: ...
def rows(msg: dict[str, Any], max_batch: int = ...) -> dict[str, Any]: ...
def _bad(message: str) -> ProtocolError: ...
