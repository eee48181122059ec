# Type stub for protocol/cbor_decode.py, which stays annotation-free so MicroPython can run it.
# `make lint` checks it against the module with mypy.stubtest.
from typing import Any

MAX_DEPTH: int
COLUMN_KEYS: tuple[str, ...]

def loads(data: bytes | bytearray | memoryview) -> Any: ...
def decode_frame(data: bytes | bytearray | memoryview, max_bytes: int = ...) -> dict[str, Any]: ...
def rows(msg: dict[str, Any], max_batch: int = ...) -> dict[str, Any]: ...
