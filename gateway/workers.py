"""The gateway on every core: a host process and ``workers`` worker processes (docs/performance.md,
docs/scaling.md section 12).

One Python process uses one core: its event loop, the storage's writer thread and every room
share one GIL. With ``workers = N`` (default: the number of cores), ``gateway serve`` becomes the
*host process*, which

- prepares what the workers share, once: the data directory, the storage schema (migrations),
  the token key and the admin and dashboard tokens;
- binds the port: first a plain bind (another program on the port fails here, as with one
  process), then one SO_REUSEPORT listening socket per worker, which the kernel balances new
  connections over. The host keeps every socket open, so the connections queued on a worker's
  socket while that worker restarts wait for the new one instead of being reset;
- runs the *host bus* (gateway/bus/local.py): the in-process broker served over a Unix socket.
  Each worker is an instance on it, so everything the cluster design gives several gateways
  holds between the workers of one host: one session per device (takeover with 4005 and an
  exact last_seq), commands to a device on any worker, the whole fleet on every dashboard,
  registry notices. With ``bus`` set (Redis, NATS), the workers join that bus instead, each as
  ``<instance_id>-w<N>``;
- starts the workers (``python -m gateway.worker``), restarts one that dies (SIGKILL, a crash)
  at once, and then with a backoff while it keeps dying, and drains them all on SIGTERM/SIGINT.

A worker is a whole gateway process (gateway/server.py) on its socket: it writes its readings
to the shared storage itself (SQLite's WAL serialises the commits of several processes; with
PostgreSQL they are ordinary concurrent clients), so an ack still follows that worker's own
durable commit. Background jobs that must run once per gateway (retention) run in worker 1.

The worker protocol, over pipes: stdin: one pickle (``WorkerSpec``), then nothing; end of file
(the host died) stops the worker. stdout: the line ``ready PORT`` once it serves. stderr: its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway import registry as registry_mod
from gateway.bus import default_instance_id
from gateway.bus.local import HostBroker
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.forward.setup import sink_names
from gateway.logs import log
from gateway.secret_files import private_dir
from gateway.storage.backends import open_storage
from protocol.device import Backoff

READY_TIMEOUT_S = 60.0  # a worker that does not serve within this is killed and started again
STOP_TIMEOUT_S = 90.0  # SIGTERM drains; past this a worker is killed
RESTART_BASE_S = 0.5  # the first restart is at once, the next ones back off from this ...
RESTART_CAP_S = 10.0  # ... to this while the worker keeps dying
STABLE_S = 30.0  # a worker that ran this long starts the backoff over
MAX_SOCKET_PATH = 100  # bytes of a Unix socket's path we use (the kernel's limit is 108)
PORT_WAIT_S = 5.0  # how long the host waits for a port held by the workers of a host just killed


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What the host hands a worker on its stdin."""

    config: GatewayConfig
    index: int  # 1..count
    count: int
    fd: int  # its listening socket (inherited)
    bus_path: str  # the host bus's socket ("" when the workers join config.bus)
    instance_id: str
    siblings: tuple[str, ...]  # the other workers' instance ids
    commit_path: str = ""  # the commit process's socket ("" when the worker writes its readings itself)
    alert_owner: str = ""  # the worker whose alert engine judges every reading (gateway/alerts/relay.py)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def worker_ids(config: GatewayConfig, count: int) -> list[str]:
    base = config.instance_id or default_instance_id()
    return [f"{base[:59]}-w{index}" for index in range(1, count + 1)]


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` SO_REUSEPORT listening sockets on host:port (port 0: one free port for all).
    Raises OSError as ``bind`` does when another program holds the port."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)  # a plain bind: fails if anyone holds the port, reuseport or not
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        port = probe.getsockname()[1]
    finally:
        probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(4096)
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Worker:
    """One child process as the host sees it: a worker (``gateway.worker``, its WorkerSpec) or the
    commit process (``gateway.committer``, its config and socket path)."""

    def __init__(self, spec: WorkerSpec, module: str = "gateway.worker", payload: object = None,
                 name: str = "") -> None:
        self.spec = spec
        self.module = module
        self.payload = spec if payload is None else payload
        self.name = name or f"worker {spec.index}"
        self.process: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.started_at = 0.0
        self.restarts = 0
        self.backoff = Backoff(int(RESTART_BASE_S * 1000), int(RESTART_CAP_S * 1000))
        self.deaths = 0  # deaths since it last ran STABLE_S
        self.port = 0

    async def start(self) -> None:
        self.ready.clear()
        self.started_at = time.monotonic()
        process = self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=None, pass_fds=(self.spec.fd,) if self.spec.fd >= 0 else ())
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(pickle.dumps(self.payload))
        with contextlib.suppress(ConnectionError):
            await process.stdin.drain()
        asyncio.get_running_loop().create_task(self._read_stdout(process.stdout))

    async def _read_stdout(self, stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            text = line.decode(errors="replace").strip()
            if text.startswith("ready "):
                self.port = int(text.split()[1])
                self.ready.set()


class Host:
    """The host process: see the module docstring."""

    def __init__(self, config: GatewayConfig, count: int) -> None:
        self.config = config
        self.count = count
        self.workers: list[Worker] = []
        self.committer: Worker | None = None
        self.sockets: list[socket.socket] = []
        self.broker: HostBroker | None = None
        self.stopping = False
        self.exit_code = 0
        self.stopped = asyncio.Event()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def _wait_stopped(self, child: Worker) -> None:
        process = child.process
        if process is None:
            return
        try:
            code = await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
            log("worker_stop_slow", logging.ERROR, worker=child.name,
                hint=f"did not drain within {STOP_TIMEOUT_S:g} s; killed")
        if code not in (0, -signal.SIGTERM):
            self.exit_code = 1

    async def _stop_child(self, child: Worker) -> None:
        if child.process is not None and child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        await self._wait_stopped(child)

    def prepare(self) -> None:
        """Once, before any worker: the data directory, the schema and the shared secrets."""
        config = self.config
        private_dir(config.data_dir)
        registry_mod.load_or_create_key(config.data_dir)
        registry_mod.load_or_create_admin_token(config.data_dir)
        if config.dashboard_auth != "off":
            registry_mod.load_or_create_secret(config.data_dir, "dashboard.token", "ewd_", "dashboard token")

    async def start(self) -> int:
        """Prepare, bind, start the bus and the workers; return the port once every worker serves."""
        from gateway.server import listen_error, tls_context

        config = self.config
        tls_context(config)  # a certificate that does not load fails here, once
        self.prepare()
        storage = open_storage(config)
        await storage.open()  # migrations, once
        try:  # the sinks' cursors before any worker commits: every worker writes the forward log from the start
            for name in sink_names(config):
                await storage.register_sink(name, int(time.time() * 1000))
        finally:
            await storage.close()
        deadline = time.monotonic() + PORT_WAIT_S
        while True:
            try:
                self.sockets = bind_sockets(config.host, config.port, self.count)
                break
            except OSError as err:
                # The workers of a host that was just killed close their sockets as they notice.
                if err.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise GatewayError(listen_error(config.host, config.port, err)) from None
                await asyncio.sleep(0.1)
        run_dir = self.run_dir()
        bus_path = commit_path = ""
        if not config.bus:
            self.broker = HostBroker(run_dir / "bus.sock")
            await self.broker.start()
            bus_path = str(self.broker.path)
        ids = worker_ids(config, self.count)
        if config.commit_process and config.storage_kind != "none":
            commit_path = str(run_dir / "commit.sock")
            spec = WorkerSpec(config, 0, self.count, -1, "", "committer", ())
            self.committer = Worker(spec, "gateway.committer", (config, commit_path), "commit process")
            await self.committer.start()
            await self._wait_ready(self.committer)
        for index, sock in enumerate(self.sockets, start=1):
            spec = WorkerSpec(config, index, self.count, sock.fileno(), bus_path, ids[index - 1],
                              tuple(i for i in ids if i != ids[index - 1]), commit_path, ids[0])
            self.workers.append(Worker(spec))
        for worker in self.workers:
            await worker.start()
        waits = [self._wait_ready(worker) for worker in self.workers]
        await asyncio.gather(*waits)
        log("gateway_workers_started", workers=self.count, port=self.workers[0].port,
            bus="host" if self.broker else config.bus_display)
        return self.workers[0].port

    def run_dir(self) -> Path:
        """Where the host's Unix sockets go: ``<data_dir>/run`` (mode 0700), or a private temporary
        folder when that path is too long for a Unix socket's address (about 108 bytes)."""
        run_dir = private_dir(Path(self.config.data_dir) / "run")
        if len(str(run_dir.resolve() / "commit.sock")) < MAX_SOCKET_PATH:
            return run_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="edgewire-")  # 0700, removed when the host ends
        return Path(self._tmp.name)

    async def _wait_ready(self, worker: Worker) -> None:
        process = worker.process
        assert process is not None
        ready = asyncio.ensure_future(worker.ready.wait())
        died = asyncio.ensure_future(process.wait())
        await asyncio.wait((ready, died), timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if worker.ready.is_set():
            died.cancel()
            return
        died.cancel()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise GatewayError(f"{worker.name} did not start (exit status {process.returncode}); "
                           "its log above says why")

    async def supervise(self) -> None:
        """Restart any worker that dies until the host stops."""
        children = [*self.workers, *([self.committer] if self.committer else [])]
        await asyncio.gather(*(self._watch(child) for child in children))

    async def _watch(self, worker: Worker) -> None:
        while True:
            process = worker.process
            assert process is not None
            code = await process.wait()
            if self.stopping:
                return
            ran = time.monotonic() - worker.started_at
            if ran >= STABLE_S:
                worker.backoff.reset()
                worker.deaths = 0
            worker.deaths += 1
            delay = 0.0 if worker.deaths == 1 else worker.backoff.next_ms() / 1000
            worker.restarts += 1
            log("worker_died", logging.ERROR, worker=worker.name, exit_status=code, ran_s=round(ran, 1),
                restart_in_s=round(delay, 2), restarts=worker.restarts)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            await worker.start()

    async def abort(self) -> None:
        """``start`` failed: stop whatever it started, without the shutdown's log lines."""
        self.stopping = True
        for child in [*self.workers, *([self.committer] if self.committer else [])]:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        if self.broker is not None:
            await self.broker.close()
        for sock in self.sockets:
            sock.close()

    async def shutdown(self) -> None:
        """SIGTERM every worker (each drains: stores and acks what it received, closes its devices with
        1012), wait for them (bounded), then stop the bus."""
        if self.stopping:
            return
        self.stopping = True
        log("gateway_stopping", workers=self.count)
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            await self._wait_stopped(worker)
        if self.committer is not None:  # after the workers: their last stores go through it
            await self._stop_child(self.committer)
        if self.broker is not None:
            await self.broker.close()
        for sock in self.sockets:
            sock.close()
        log("gateway_stopped", exit_code=self.exit_code)
        self.stopped.set()


def check_workers(config: GatewayConfig) -> int:
    """The number of worker processes for ``config`` (0 = one process: no host, no workers).

    ``workers = 0`` (the default) is one per core on the embedded defaults, and one process when a
    bus is set: a cluster scales out with instances (pods of one core, docs/scaling.md); several
    workers per instance there are asked for by number."""
    if config.workers == 0 and config.bus:
        return 0
    count = config.workers if config.workers > 0 else default_workers()
    return count if count > 1 else 0
