"""Test tools for Pi agent updates: a release key, agent wheels, a scripted gateway, a stand-in systemd.

- Manifests in the contract's shape, signed with tests/helpers/ota_release.py's ReleaseKey.
- ``make_wheel`` zips this checkout's edge/, protocol/ and runtime/ packages into a wheel of any
  version, with files replaced (a release that crashes on start); no build backend, so it takes
  milliseconds. Its ``edge`` extra requires nothing: the agents get websockets and gpiozero
  from ``deps_dir`` on PYTHONPATH (a Pi gets them from its wheelhouse).
- ``ScriptedGateway`` speaks the device side of the OTA contract: welcome, acks, commands, the
  ``ota_get``/``ota_chunk`` exchange, and records every ``ota`` state frame.
- ``AgentUnit`` is what systemd does with edgewire-agent.service: run
  ``<prefix>/current/venv/bin/edgewire-agent`` (the symlink is resolved at each start).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from tests.edge.agentproc import wait_for
from tests.helpers.ota_release import ReleaseKey
from tests.helpers.ota_release import manifest_text as release_manifest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "protocol", "runtime")


def manifest_text(version: str, wheel: Path, min_runtime: str = "3.11") -> str:
    return release_manifest(version, {wheel.name: wheel.read_bytes()}, kind="pi", min_runtime=min_runtime)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(out_dir: Path, version: str, replace: dict[str, str] | None = None) -> Path:
    """A wheel of this checkout's agent as ``version``; ``replace`` maps a path (edge/cli.py) to new text."""
    replace = dict(replace or {})
    files: dict[str, bytes] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_file() and "__pycache__" not in rel and path.suffix in (".py", ".pyi", ".toml", ".service",
                                                                                  ".path", ".typed", ""):
                files[rel] = path.read_bytes()
    files["edge/__init__.py"] = files["edge/__init__.py"].replace(b'__version__ = "0.1.0"',
                                                                  f'__version__ = "{version}"'.encode())
    for rel, text in replace.items():
        files[rel] = text.encode()
    info = f"edgewire-{version}.dist-info"
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: edgewire\nVersion: {version}\n"
                                 "Provides-Extra: edge\n").encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: edgewire-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n")
    files[f"{info}/entry_points.txt"] = (b"[console_scripts]\nedgewire-agent = edge.cli:main\n"
                                         b"edgewire-agent-update = edge.update:main\n")
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"edgewire-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    wheel.write_bytes(buffer.getvalue())
    return wheel


def deps_dir(base: Path) -> Path:
    """A directory with the agent's third-party packages (links into this venv), for PYTHONPATH."""
    import importlib.util

    out = base / "deps"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("websockets", "gpiozero", "colorzero"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        source = Path(spec.origin).parent
        link = out / source.name
        if not link.exists():
            link.symlink_to(source)
    return out




class ScriptedGateway:
    """A loopback WebSocket server playing the gateway's part of the OTA contract, in its own thread."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}  # (release, file) -> bytes served
        self.corrupt: set[tuple[str, str]] = set()  # served with one byte flipped
        self.no_ack_fw: set[str] = set()  # agents reporting this fw get no acks
        self.states: list[dict[str, Any]] = []  # every ota frame
        self.statuses: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.gets = 0
        self.offsets: list[int] = []  # the off of every ota_get, in order
        self.hold_after: int | None = None  # leave ota_get requests after this many unanswered
        self.outstanding_max = 0
        self.loop = asyncio.new_event_loop()
        self.ws: ServerConnection | None = None
        self.fw: str | None = None
        self.port = 0
        self.server: Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/device"

    def start(self) -> ScriptedGateway:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    async def _serve(self) -> Server:
        return await serve(self.handler, "127.0.0.1", 0, compression=None)

    def stop(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.fw = None
        outstanding = 0
        await ws.send(json.dumps({"t": "welcome", "v": 1, "device": "PI-OTA", "last_seq": 0, "rate": 50.0,
                                  "burst": 100.0, "max_batch": 100, "max_frame": 65536, "time": 0}))
        async for text in ws:
            msg = json.loads(text)
            kind = msg.get("t")
            if kind == "status":
                self.fw = msg.get("fw")
                with self.lock:
                    self.statuses.append(msg)
            elif kind == "data" and self.fw is not None and self.fw not in self.no_ack_fw:
                last = msg["seq"] + len(msg.get("r", [msg])) - 1 if isinstance(msg.get("r"), list) else msg["seq"]
                await ws.send(json.dumps({"t": "ack", "seq": last}))
            elif kind == "result":
                self.results[msg["id"]] = msg
            elif kind == "ota":
                with self.lock:
                    self.states.append(msg)
            elif kind == "ota_get":
                outstanding += 1
                self.outstanding_max = max(self.outstanding_max, outstanding)
                outstanding -= 1
                self.gets += 1
                self.offsets.append(msg.get("off", -1))
                if self.hold_after is None or self.gets <= self.hold_after:
                    await ws.send(self.chunk(msg))

    def chunk(self, msg: dict[str, Any]) -> str:
        key = (msg.get("release"), msg.get("file"))
        data = self.files.get(key)  # type: ignore[arg-type]
        if data is None:
            return json.dumps({"t": "error", "code": "ota_unknown", "msg": "no such release or file"})
        off, length = msg["off"], msg["len"]
        part = data[off:off + length]
        if key in self.corrupt and off == 0:
            part = bytes([part[0] ^ 0xFF]) + part[1:]
        return json.dumps({"t": "ota_chunk", "release": key[0], "file": key[1], "off": off,
                           "data": base64.b64encode(part).decode(), "size": len(data)})

    def command(self, name: str, args: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send a command to the connected agent; its result frame."""
        wait_for(lambda: self.ws is not None and self.fw is not None, 30, "a connected agent")
        command_id = f"c-{time.monotonic_ns()}"
        frame = json.dumps({"t": "cmd", "id": command_id, "name": name, "args": args})
        assert self.ws is not None
        asyncio.run_coroutine_threadsafe(self.ws.send(frame), self.loop).result(10)
        return wait_for(lambda: self.results.get(command_id), timeout, f"the result of {name}")  # type: ignore[no-any-return]

    def offer(self, key: ReleaseKey, version: str, wheel: Path, sig: str | None = None) -> dict[str, Any]:
        text = manifest_text(version, wheel)
        self.files[(f"pi-{version}", wheel.name)] = wheel.read_bytes()
        return self.command("ota", {"manifest": text, "sig": sig or key.sign(text)})

    def state_of(self, release: str) -> list[tuple[str, str | None]]:
        with self.lock:
            return [(m["state"], m.get("reason")) for m in self.states if m.get("release") == release]


class AgentUnit:
    """edgewire-agent.service as systemd runs it: ExecStart through the ``current`` symlink."""

    def __init__(self, prefix: Path, config: Path, deps: Path, log: Path) -> None:
        self.prefix = prefix
        self.config = config
        self.deps = deps
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env.update(PYTHONPATH=str(self.deps), GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(self.prefix / "current" / "venv" / "bin" / "edgewire-agent"),
                                          "--config", str(self.config), "run"], stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.prefix)
        self.starts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        with self.lock:
            self.stop()
            self.start()
