# Type stub for protocol/ota.py (annotation-free for MicroPython); checked by mypy.stubtest.
from collections.abc import Callable
from typing import Any

from protocol.wire import _Dumps, _Loads

S_DOWNLOADING: str
S_VERIFYING: str
S_TRIAL: str
S_GOOD: str
S_ROLLED_BACK: str
S_FAILED: str
STATES: tuple[str, ...]
FINAL: tuple[str, ...]
C_BAD_SIGNATURE: str
C_BAD_MANIFEST: str
C_WRONG_KIND: str
C_RUNTIME_TOO_OLD: str
C_DISABLED: str
C_BUSY: str
C_NO_SPACE: str
R_BAD_HASH: str
R_BAD_SIGNATURE: str
R_NO_SPACE: str
R_CRASHED: str
R_NO_GATEWAY: str
R_HEALTH_CHECK: str
R_INSTALL: str
R_ABORTED: str
KINDS: tuple[str, ...]
MAX_MANIFEST: int
MAX_FILES: int
MAX_FILE_BYTES: dict[str, int]
MAX_GET: int
CHUNK: dict[str, int]
STATE_VERSION: int

class OtaError(ValueError):
    code: str
    message: str
    def __init__(self, code: str, message: str) -> None: ...

_Point = tuple[int, int]

def parse_pubkey(text: object) -> _Point | None: ...
def valid_sig(text: object) -> bool: ...
def verify(pubkey: str | _Point, message: bytes | str, sig: object) -> bool: ...

class Manifest:
    text: str
    release: str
    kind: str
    version: str
    min_runtime: tuple[int, ...]
    files: list[tuple[str, int, str]]
    created_ms: int
    total: int
    def __init__(
        self,
        text: str,
        release: str,
        kind: str,
        version: str,
        min_runtime: tuple[int, ...],
        files: list[tuple[str, int, str]],
        created_ms: int,
    ) -> None: ...

def valid_version(text: object) -> bool: ...
def valid_file_name(text: object) -> bool: ...
def runtime_tuple(text: object) -> tuple[int, ...] | None: ...
def runtime_ok(running: tuple[Any, ...], minimum: tuple[int, ...]) -> bool: ...
def parse_manifest(text: object, loads: _Loads | None = None) -> Manifest: ...

_Result = tuple[bool, str, dict[str, Any] | None]

class OtaCore:
    kind: str
    running: str | None
    runtime: tuple[Any, ...]
    key: _Point | None
    free: Callable[[], int | None] | None
    chunk: int
    dumps: _Dumps
    loads: _Loads | None
    manifest: Manifest | None
    sig: str | None
    release: str | None
    stage: str | None
    reason: str | None
    index: int
    off: int
    done: int
    outstanding: bool
    report_due: bool
    begin_due: bool
    def __init__(
        self,
        kind: str,
        running: str | None,
        runtime: tuple[Any, ...],
        pubkey: str | None = None,
        free: Callable[[], int | None] | None = None,
        chunk: int | None = None,
        dumps: _Dumps | None = None,
        loads: _Loads | None = None,
    ) -> None: ...
    def busy(self) -> bool: ...
    def offer(self, args: dict[str, Any]) -> _Result: ...
    def begun(self) -> None: ...
    def set_state(self, state: str, reason: str | None = None, release: str | None = None) -> None: ...
    def fail(self, reason: str) -> None: ...
    def refused(self, code: object) -> bool: ...
    def online(self) -> None: ...
    def connection_lost(self) -> None: ...
    def position(self) -> tuple[str, int] | None: ...
    def state_frame(self) -> dict[str, Any]: ...
    def next_frame(self) -> str | None: ...
    def on_chunk(self, msg: dict[str, Any]) -> tuple[str, int, bytes] | None: ...
    def absorb(self, data: bytes) -> int: ...
    def state(self) -> dict[str, Any] | None: ...
    def restore(self, snapshot: object) -> bool: ...
