# Type stub for protocol/cbor.py, which stays annotation-free so MicroPython can run it.
# `make lint` checks it against the module with mypy.stubtest.
from collections.abc import Sequence

from protocol.wire import Reading

MAX_PLACES: int
INT_COLUMN: int
QUALITY_CODES: tuple[str | None, ...]
_NULL: int
_SCALE: tuple[int, ...]

def encode_data(
    seq: int, readings: Sequence[Reading], boot: str | None = None, up: int | None = None
) -> bytearray | None: ...
