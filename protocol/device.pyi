# Type stub for protocol/device.py (annotation-free for MicroPython); checked by mypy.stubtest.
from collections.abc import Callable, Iterable
from typing import Any

from protocol.ota import OtaCore
from protocol.outbox import Outbox
from protocol.wire import Reading, _Dumps, _Loads

D_WELCOME: str
D_ACK: str
D_DROP: str
D_RESEND: str
D_SLOW: str
D_COMMAND: str
D_CLOSING: str
D_NOTE: str
D_INVALID: str
D_OTA_CHUNK: str
R_BACKOFF: str
R_SLOW: str
R_HOURLY: str
R_STOP: str
R_REFRESH: str
HOURLY_MS: int
ENC_JSON: str
ENC_CBOR: str
REPEATS_KEPT: int
REPEAT_MAX_BYTES: int
REPEATED: str
CLOSE_ACTIONS: dict[int, str]
REFUSAL_MAX_BYTES: int
STATE_VERSION: int

def refusal_code(body: bytes | bytearray | str | None, loads: _Loads | None = None) -> str | None: ...

_CommandResult = tuple[bool, str, Any]
_Handler = Callable[[dict[str, Any]], _CommandResult]

MIN_RATE: float
MAX_RATE: float
MAX_RETRY_MS: int

class Backoff:
    base_ms: int
    cap_ms: int
    rand: Callable[[], float]
    attempt: int
    def __init__(
        self, base_ms: float = 1000, cap_ms: float = 60000, rand: Callable[[], float] | None = None
    ) -> None: ...
    def draw(self, delay: int) -> int: ...
    def next_ms(self) -> int: ...
    def at_cap_ms(self) -> int: ...
    def reset(self) -> None: ...

class Policy:
    reconnect: bool
    obey_slow: bool
    run_commands: bool
    def __init__(self, reconnect: bool = True, obey_slow: bool = True, run_commands: bool = True) -> None: ...

DEVICE: Policy
LOADGEN: Policy

class Decision:
    kind: str
    seq: int
    last: int
    count: int
    renumber: int
    wait_ms: int
    reply: str | None
    name: str | None
    ok: bool
    code: str | None
    message: str
    close_code: int
    data: bytes | None
    def __init__(
        self,
        kind: str,
        seq: int = 0,
        last: int = 0,
        count: int = 0,
        renumber: int = 0,
        wait_ms: int = 0,
        reply: str | None = None,
        name: str | None = None,
        ok: bool = True,
        code: str | None = None,
        message: str = "",
        close_code: int = 0,
        data: bytes | None = None,
    ) -> None: ...

class Reconnect:
    action: str
    delay_ms: int
    at_ms: int
    code: int
    reason: str
    error: str | None
    def __init__(
        self, action: str, delay_ms: int, at_ms: int, code: int, reason: str, error: str | None = None
    ) -> None: ...

class DeviceSession:
    device_id: str
    token: str | None
    jwt: str | None
    boot: str | None
    batch_limit: int
    batch_cap: int
    max_batch: int
    slowed: bool
    window: int
    outbox: Outbox | None
    backoff: Backoff
    policy: Policy
    handlers: dict[str, _Handler]
    acked: int
    sent: int
    in_flight: list[tuple[int, int]]
    online: bool
    rate: float
    max_frame: int
    send_at_ms: int | None
    welcome: dict[str, Any] | None
    rejected: int
    oversize: int
    closing: int
    stopped: bool
    retry_at_ms: int
    last_reconnect: Reconnect | None
    encoding: str
    cbor: bool
    answered: list[tuple[str, str]]
    ota: OtaCore | None
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
        outbox: Outbox | None = None,
        backoff: Backoff | None = None,
        policy: Policy | None = None,
        handlers: dict[str, _Handler] | None = None,
        encoding: str = ...,
        batch_cap: int | None = None,
        ota: OtaCore | None = None,
    ) -> None: ...
    @property
    def credential(self) -> str | None: ...
    def auth_frame(self) -> str | None: ...
    def set_credential(self, token: str | None = None, jwt: str | None = None) -> None: ...
    def subprotocols(self) -> list[str]: ...
    def negotiated(self, subprotocol: str | None) -> bool: ...
    def handle(self, text: str | bytes, now_ms: int = 0) -> Decision: ...
    def run_command(self, name: object, args: object) -> _CommandResult: ...
    def _remember(self, command_id: str, ok: bool, text: str | None, reply: str) -> None: ...
    def can_send(self) -> bool: ...
    def send_wait_ms(self, now_ms: int) -> int: ...
    def next_frame(
        self, pending: Iterable[Reading] | None = None, up: int | None = None, now_ms: int | None = None
    ) -> str | bytearray | None: ...
    def result_frame(self, command_id: Any, ok: bool, message: str | None = None, data: Any = None) -> str: ...
    def status_frame(self, fields: dict[str, Any]) -> str: ...
    def _on_ota_chunk(self, msg: dict[str, Any]) -> Decision: ...
    def ota_frame(self) -> str | None: ...
    def connection_lost(self) -> None: ...
    def closed(self, code: int | None = None, now_ms: int = 0) -> Reconnect: ...
    def refused(self, status: int, body: bytes | bytearray | str | None = None, now_ms: int = 0) -> Reconnect: ...
    def failed(self, now_ms: int = 0) -> Reconnect: ...
    def refreshed(self, token: str | None = None, jwt: str | None = None, now_ms: int = 0) -> Reconnect: ...
    def connect_due(self, now_ms: int) -> bool: ...
    def state(self) -> dict[str, int]: ...
    def restore(self, snapshot: object) -> bool: ...
