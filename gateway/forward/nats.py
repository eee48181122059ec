"""The NATS JetStream sink (nats-py): each stored reading to ``<prefix>.<device>``, at least once.

Each message is the reading's JSON (gateway/forward/payload.py) with the headers
``Nats-Msg-Id: <device>:<seq>`` (JetStream drops a message whose id it saw within the
stream's duplicate window, 2 minutes by default, so a resend after a reconnect or a restart
is stored once), ``Edgewire-Device`` and ``Edgewire-Seq``. A reading counts as delivered when
JetStream's PubAck arrives (a duplicate's ack included); ``publish_async`` keeps up to the
forwarder's window in flight.

The stream (``nats_stream``) is created at connect if missing: file storage, subjects
``<prefix>.>``, messages kept as long as the gateway keeps readings (``max_age``). An
existing stream is left as its operator configured it, but must take those subjects.

Connections: one at a time, no automatic reconnect inside nats-py: when it drops (or an ack
does not come within ``ACK_TIMEOUT_S``), every reading in flight is reported FAILED, the
forwarder goes back to the first one not acked, and the sink reconnects with a backoff
(0.5 s doubling to 10 s). A device id containing ``.`` spans several subject tokens:
subscribe with ``<prefix>.>`` (the headers carry the exact id).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections import deque
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import NotFoundError

from gateway.backoff import Backoff
from gateway.bus.nats import close_client
from gateway.forward.payload import reading_json
from gateway.forward.settings import BrokerUrl
from gateway.forward.sink import ACKED, FAILED, Done, Sink
from gateway.logs import log
from gateway.storage.base import ReadingRow

ACK_TIMEOUT_S = 10.0
SINK_NAME = "nats"


class NatsSink(Sink):
    name = SINK_NAME

    def __init__(self, url: BrokerUrl, *, stream: str, subject_prefix: str, max_age_s: float, window: int,
                 client_name: str, ca_file: str = "") -> None:
        super().__init__()
        self.url = url
        self.stream = stream
        self.prefix = subject_prefix
        self.max_age_s = max_age_s
        self.window = window
        self.client_name = client_name
        self.ca_file = ca_file
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._ready = False
        self._outbox: deque[tuple[ReadingRow, Done]] = deque()
        self._pending: deque[tuple[float, asyncio.Future[Any], Done]] = deque()  # (deadline, ack future, done)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lost = asyncio.Event()
        self.last_error = ""
        self.connects = 0
        self.duplicates = 0  # acks JetStream marked duplicate (a resend it had stored already)

    # ------------------------------------------------------------ Sink
    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._drop_connection("stopping")

    @property
    def ready(self) -> bool:
        return self._ready

    def send(self, reading: ReadingRow, done: Done) -> None:
        if not self._ready:
            done(FAILED)
            return
        self._outbox.append((reading, done))
        self._wake.set()

    def health(self) -> dict[str, Any]:
        return {"state": "ok" if self._ready else "connecting", "broker": self.url.display,
                "error": self.last_error or None}

    # ------------------------------------------------------------ the connection
    async def _run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while not self._stopping:
            try:
                await self._connect()
                backoff.reset()
                await self._pump()
            except (NatsError, OSError, TimeoutError) as err:
                message = f"{type(err).__name__}: {err}"[:300]
                if message != self.last_error:
                    log("nats_sink_unavailable", logging.WARNING, broker=self.url.display, error=message,
                        note="is nats-server running with JetStream, and nats_url right? retrying")
                self.last_error = message
            await self._drop_connection(self.last_error or "lost")
            if self._stopping:
                return
            await asyncio.sleep(backoff.next_s())

    async def _connect(self) -> None:
        lost = asyncio.Event()

        async def on_lost(*_args: Any) -> None:
            lost.set()
            self._wake.set()

        async def on_error(_err: Exception) -> None:
            return None

        tls: ssl.SSLContext | None = None
        if self.url.tls:
            tls = ssl.create_default_context(cafile=self.ca_file or None)
        self.nc = await nats.connect(f"{self.url.scheme}://{self.url.host}:{self.url.port}", name=self.client_name,
                                     user=self.url.username or None, password=self.url.password or None,
                                     tls=tls, allow_reconnect=False, connect_timeout=5, ping_interval=5,
                                     max_outstanding_pings=2, disconnected_cb=on_lost, closed_cb=on_lost,
                                     error_cb=on_error)
        self._lost = lost
        self.js = self.nc.jetstream(timeout=ACK_TIMEOUT_S, publish_async_max_pending=max(1, self.window))
        await self._ensure_stream()
        self.connects += 1
        self.last_error = ""
        self._ready = True
        log("nats_sink_connected", broker=self.url.display, stream=self.stream)
        self.changed()

    async def _ensure_stream(self) -> None:
        assert self.js is not None
        subjects = [f"{self.prefix}.>"]
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            await self.js.add_stream(name=self.stream, subjects=subjects, storage=StorageType.FILE,
                                     max_age=self.max_age_s)
            log("nats_stream_created", stream=self.stream, subjects=subjects[0], max_age_s=self.max_age_s)
            return
        have = list(info.config.subjects or [])
        if subjects[0] not in have and ">" not in have:
            raise NatsError(f"stream {self.stream} exists with subjects {have}, not {subjects[0]}: "
                            "add that subject to it, or set nats_stream to another name")

    async def _drop_connection(self, reason: str) -> None:
        was = self._ready
        self._ready = False
        nc, self.nc, self.js = self.nc, None, None
        self._fail_all()
        if nc is not None:
            await close_client(nc)
        if was:
            log("nats_sink_disconnected", logging.WARNING, broker=self.url.display, reason=reason[:200],
                note="readings in flight are sent again after the reconnect")
            self.changed()

    def _fail_all(self) -> None:
        pending, self._pending = self._pending, deque()
        outbox, self._outbox = self._outbox, deque()
        for _deadline, future, done in pending:
            future.cancel()
            done(FAILED)
        for _reading, done in outbox:
            done(FAILED)

    async def _pump(self) -> None:
        """Publish what ``send`` queued; report acks; fail everything on a lost connection or a late ack."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if self._lost.is_set():
                raise NatsError("connection lost")
            now = loop.time()
            if self._pending and self._pending[0][0] < now and not self._pending[0][1].done():
                raise TimeoutError(f"no JetStream ack within {ACK_TIMEOUT_S:g} s")
            while self._pending and self._pending[0][1].done():
                self._pending.popleft()
            if not self._outbox:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                continue
            assert self.js is not None
            reading, done = self._outbox.popleft()
            headers = {"Nats-Msg-Id": f"{reading.device_id}:{reading.seq}", "Edgewire-Device": reading.device_id,
                       "Edgewire-Seq": str(reading.seq)}
            future = await self.js.publish_async(f"{self.prefix}.{reading.device_id}", reading_json(reading),
                                                 wait_stall=ACK_TIMEOUT_S, headers=headers)
            future.add_done_callback(functools.partial(self._acked, done))
            self._pending.append((now + ACK_TIMEOUT_S, future, done))

    def _acked(self, done: Done, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return  # failed by _fail_all already
        error = future.exception()
        if error is not None:
            done(FAILED)
            self.last_error = f"{type(error).__name__}: {error}"[:300]
            self._wake.set()
            return
        if getattr(future.result(), "duplicate", False):
            self.duplicates += 1
        done(ACKED)
