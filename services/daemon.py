"""A throwaway server that runs in the foreground (redis-server, nats-server): the shared lifecycle.

A subclass names its binary, its argv for a port and a directory, and how to tell that it
accepts clients. This class finds a free loopback port, runs the binary with its output in a
log file inside a private temporary directory, waits until it is ready, and stops it with
SIGTERM (clean) or SIGKILL (a crash). ``start()`` after ``stop()`` reuses the same port and
directory, so clients reconnect to the same address and a server with a store finds it again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Self, TypeVar

from services.errors import NotInstalledError, ServiceError
from services.process import Throwaway, free_port, raise_nofile_limit

STOP_MODES = ("term", "kill")


class Daemon(Throwaway):
    """One disposable server process. Not thread-safe; one owner starts and stops it."""

    name = "server"
    binary = ""
    install_hint = ""
    raise_open_files = False  # start the server with RLIMIT_NOFILE raised to the hard limit (load tests)

    def __init__(self, port: int | None = None, parent_dir: str | Path | None = None,
                 binary: str | None = None, start_timeout_s: float = 30.0) -> None:
        self.port = port or 0
        self._fixed_port = port is not None
        self._parent = Path(parent_dir) if parent_dir else None
        self._binary = binary or self.binary
        self.start_timeout_s = start_timeout_s
        self.base_dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ------------------------------------------------------------------ for subclasses
    def argv(self, binary: str, base_dir: Path) -> list[str]:
        """The command line that runs the server on ``self.port`` with its files in ``base_dir``."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the server answers on ``self.port`` now (a cheap protocol-level check)."""
        raise NotImplementedError

    def prepare(self, base_dir: Path) -> None:
        """Write what the server needs in ``base_dir`` before its first start (config files)."""

    # ------------------------------------------------------------------ paths
    @property
    def log_path(self) -> Path:
        if self.base_dir is None:
            raise ServiceError(f"the {self.name} has not been set up yet: call start()")
        return self.base_dir / f"{self.name}.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, ServiceError):
            return ""

    def _resolve_binary(self) -> str:
        found = shutil.which(self._binary) if os.sep not in self._binary else (
            self._binary if os.access(self._binary, os.X_OK) else None)
        if found is None:
            raise NotInstalledError(f"{self._binary} not found: {self.install_hint}")
        return found

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Start the server (first time: in a new private directory on a free port) and wait until ready."""
        if self.running:
            return self
        binary = self._resolve_binary()
        first = self.base_dir is None
        if first:
            base = Path(tempfile.mkdtemp(prefix=f"ew-{self.name}-", dir=self._parent))
            base.chmod(0o700)
            self.base_dir = base
            self.prepare(base)
        assert self.base_dir is not None
        attempts = 1 if self._fixed_port or not first else 5
        for attempt in range(attempts):
            if not self._fixed_port and (first or not self.port):
                self.port = free_port()
            try:
                self._spawn(binary, self.base_dir)
                return self
            except ServiceError:
                if attempt + 1 < attempts and "address already in use" in self.log_text()[-2000:].lower():
                    continue  # someone took the port between free_port() and the bind: pick another
                raise
        raise AssertionError("unreachable")

    def _spawn(self, binary: str, base_dir: Path) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap()
        self.process = subprocess.Popen(self.argv(binary, base_dir), stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, cwd=base_dir, start_new_session=True,
                                        preexec_fn=raise_nofile_limit if self.raise_open_files else None)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reap()
                raise ServiceError(f"{self.name} exited at start (code {self.process.returncode}); "
                                   f"its log {self.log_path} ends with:\n{self.log_text()[-1500:]}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop("kill")
        raise ServiceError(f"{self.name} did not answer on 127.0.0.1:{self.port} within {self.start_timeout_s:g} s; "
                           f"its log {self.log_path} ends with:\n{self.log_text()[-1500:]}")

    def stop(self, mode: str = "term", timeout_s: float = 30.0) -> None:
        """Stop the server: ``term`` (SIGTERM, a clean shutdown) or ``kill`` (SIGKILL, a crash)."""
        if mode not in STOP_MODES:
            raise ServiceError(f"stop mode {mode!r} must be one of {', '.join(STOP_MODES)}")
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM if mode == "term" else signal.SIGKILL)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self._reap()

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, mode: str = "term") -> Self:
        """Stop then start again on the same port (and directory)."""
        self.stop(mode)
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    def cleanup(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and delete its directory."""
        with contextlib.suppress(ServiceError, OSError):
            self.stop("term", timeout_s=10)
        with contextlib.suppress(ServiceError, OSError):
            self.stop("kill")
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    # ------------------------------------------------------------------ clients
    @property
    def url(self) -> str:
        raise NotImplementedError

    def _talk(self, send: bytes, timeout_s: float = 1.0) -> bytes:
        """Connect to the port, send ``send`` (may be empty) and return the first answer (b"" on failure)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
                if send:
                    sock.sendall(send)
                return sock.recv(8192)
        except OSError:
            return b""


S = TypeVar("S", bound=Throwaway)


def serve_until_signal(make: Callable[[int | None], S], address: Callable[[S], str], argv: list[str] | None, *,
                       prog: str, description: str, what: str = "URL") -> int:
    """``python -m services.X``: run one server (``make(port)``) until Ctrl-C or SIGTERM, printing its
    ``address`` (a URL, or a DSN: ``what`` names it and the ``--url-file``/``--dsn-file`` option)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument(f"--{what.lower()}-file", dest="address_file", metavar=f"{what}_FILE", default=None,
                        help=f"also write the {what} to this file")
    args = parser.parse_args(argv)
    stop = {"now": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = make(args.port)
        with server:
            text = address(server)
            if args.address_file:
                Path(args.address_file).write_text(text + "\n")
            print(text, flush=True)
            while not stop["now"] and server.running:
                time.sleep(0.2)
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_until_signal(make: type[Daemon], argv: list[str] | None, description: str) -> int:
    """``python -m services.X`` for a Daemon: run it until Ctrl-C or SIGTERM, printing its URL."""
    return serve_until_signal(lambda port: make(port=port), lambda server: server.url, argv,
                              prog=f"python -m {make.__module__}", description=description)
