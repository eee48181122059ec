"""One paho-mqtt 2.x client driven by the event loop.

paho (CallbackAPIVersion.VERSION2, MQTT 5, clean start) runs in its "external event loop"
mode: its socket is watched by the asyncio loop (``loop_read`` / ``loop_write`` when
readable / writable, ``loop_misc`` every second for keepalives), so every paho callback runs
on the event loop, with no thread and no lock contention per message. Only the blocking
part of a (re)connect, paho's ``reconnect()`` (DNS, TCP connect, TLS handshake), runs on a
worker thread, so a slow or unreachable broker never stalls the gateway. Reconnects back off
from 1 s doubling to 10 s.

After a reconnect paho sends again the QoS 1 messages not yet acknowledged. Its session
lives in memory only, so durability comes from the forwarders' stored cursors, not from
paho; and ``max_queued_messages`` is set (paho's default is unlimited): ``publish`` returns
False instead of queueing more, and the caller counts it.

MQTT 5 PUBACKs carry a reason code: a failure code (e.g. 0x87 not authorized, an ACL
refusal) is reported as REFUSED, so a broker that silently drops a message under MQTT 3.1.1
cannot hide it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from gateway.backoff import Backoff
from gateway.forward.settings import BrokerUrl
from gateway.forward.sink import ACKED, REFUSED, Done
from gateway.logs import log

KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
MAX_INFLIGHT = 100  # QoS 1 messages on the wire at once; lowered to the broker's Receive Maximum
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 10.0

Message = tuple[str, bytes, bool]  # topic, payload, retained


class MqttLink:
    """A paho client; ``on_connect(session_present)``, ``on_disconnect(reason)`` and ``on_message(batch)``
    run on the event loop."""

    def __init__(self, url: BrokerUrl, *, client_id: str, username: str = "", password: str = "",
                 ca_file: str = "", will: tuple[str, bytes] | None = None, max_queued: int = 10_000,
                 on_connect: Callable[[bool], None], on_disconnect: Callable[[str], None],
                 on_message: Callable[[list[Message]], None]) -> None:
        self.url = url
        self.client_id = client_id
        self.max_queued = max_queued
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_message = on_message
        self.connected = False
        self.connects = 0
        self.last_error = ""
        self.refused_publishes = 0  # publish() calls paho turned away (its bounded queue was full)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._waiting: dict[int, Done] = {}  # mid -> done
        self._sock: Any = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.listeners: list[Callable[[], None]] = []  # told when ``connected`` changes (sinks waiting on it)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(max_queued)
        client.connect_timeout = CONNECT_TIMEOUT_S
        if username or url.username:
            client.username_pw_set(username or url.username, password or url.password or None)
        if url.tls:
            client.tls_set(ca_certs=ca_file or None, cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_publish = self._paho_publish
        client.on_message = self._paho_message
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        self.client = client

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = False
        self.client.connect_async(self.url.host, self.url.port, KEEPALIVE_S, clean_start=True)
        self._task = self._loop.create_task(self._keep_connected())

    async def stop(self, final: list[tuple[str, bytes]] | None = None, timeout_s: float = 5.0) -> None:
        """Publish ``final`` (retained, QoS 1; e.g. the bridge's ``offline``), wait (bounded) for their acks,
        then disconnect cleanly (no last will)."""
        if self._loop is None:
            return
        if self.connected and final:
            acked = asyncio.Event()
            left = [len(final)]

            def done(_outcome: int) -> None:
                left[0] -= 1
                if left[0] == 0:
                    acked.set()

            for topic, payload in final:
                if not self.publish(topic, payload, retain=True, done=done):
                    done(REFUSED)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acked.wait(), timeout_s)
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.connected:
            self.client.disconnect()
            with contextlib.suppress(Exception):
                self.client.loop_write()  # the DISCONNECT packet
        self._close_socket()
        self.connected = False
        self._loop = None

    async def _keep_connected(self) -> None:
        """Connect, reconnect with a backoff, and give paho its periodic call."""
        backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
        while not self._stopping:
            if self._sock is None:
                if backoff.delay_s:
                    await self._sleep(backoff.delay_s)
                    if self._stopping:
                        return
                try:
                    await asyncio.to_thread(self.client.reconnect)  # DNS, TCP and TLS off the event loop
                except (OSError, ssl.SSLError, ValueError) as err:
                    self._unreachable(err)
                    backoff.next_s()
                    continue
            self.client.loop_misc()  # keepalive pings; a silent broker is detected here
            await self._sleep(1.0)  # woken at once when the socket closes
            if self.connected:
                backoff.reset()
            elif self._sock is None:
                backoff.next_s()  # refused (CONNACK) or dropped before it

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _unreachable(self, err: BaseException) -> None:
        message = f"{type(err).__name__}: {err}"[:200]
        if self.last_error != message:
            log("mqtt_unreachable", logging.WARNING, broker=self.url.display, error=message,
                note="is the broker running and mqtt_url right? retrying")
        self.last_error = message

    # ------------------------------------------------------------ publishing
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                done: Done | None = None) -> bool:
        """Queue a message; False if paho's bounded queue is full (nothing queued, ``done`` not called).

        ``done(ACKED)`` / ``done(REFUSED)`` follows the PUBACK. While disconnected the message waits in
        paho's queue and goes out after the reconnect.
        """
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.refused_publishes += 1
            return False
        if done is not None:
            if qos == 0:
                done(ACKED)
            else:
                self._waiting[info.mid] = done
        return True

    def subscribe(self, topics: list[str]) -> None:
        if topics:
            self.client.subscribe([(topic, 1) for topic in topics])

    @property
    def queued(self) -> int:
        """Messages in paho's queue (sent and not acked, or waiting to be sent)."""
        return len(self.client._out_messages)  # read-only look at paho's bounded queue

    # ------------------------------------------------------------ paho's socket, watched by the loop
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the event loop: now if called from it, else soon (paho's reconnect thread)."""
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        elif self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        if self._loop is None or self._stopping:
            return
        self._sock = sock
        self._loop.add_reader(sock, self._readable)

    def _readable(self) -> None:
        self.client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    def _socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch, sock)

    def _unwatch(self, sock: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None
        self._wake.set()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._unwatch(self._sock)
        with contextlib.suppress(Exception):
            self.client._sock_close()  # paho's own close (its socket, its state)

    def _register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        if self._loop is not None and not self._stopping:
            with contextlib.suppress(ValueError, OSError):
                self._loop.add_writer(sock, self._writable)

    def _unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock)

    # ------------------------------------------------------------ paho's callbacks (on the event loop)
    def _paho_connect(self, _client: paho.Client, _userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if self.last_error != str(reason):
                log("mqtt_connect_refused", logging.ERROR, broker=self.url.display, reason=str(reason),
                    note="check mqtt_username, mqtt_password_file and the broker's ACLs")
            self.last_error = str(reason)
            return
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        if isinstance(receive_max, int) and 0 < receive_max < MAX_INFLIGHT:
            # paho does not lower its in-flight limit to the broker's Receive Maximum by itself, and its
            # setter refuses while connected: this runs before any queued message is sent again.
            self.client._max_inflight_messages = receive_max
        self.connected = True
        self.connects += 1
        self.last_error = ""
        session = bool(getattr(flags, "session_present", False))
        log("mqtt_connected", broker=self.url.display, client_id=self.client_id, session_present=session)
        self._on_loop(self._on_connect, session)
        self._on_loop(self._tell)

    def _tell(self) -> None:
        for listener in self.listeners:
            listener()

    def _paho_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any,
                         _properties: Any) -> None:
        self._on_loop(self._lost, str(reason))

    def _lost(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        if self._sock is not None:
            self._unwatch(self._sock)
        if was and not self._stopping:
            log("mqtt_disconnected", logging.WARNING, broker=self.url.display, reason=reason,
                note="reconnecting; unacknowledged messages are sent again")
            self._on_disconnect(reason)
            self._tell()

    def _paho_publish(self, _client: paho.Client, _userdata: Any, mid: int, reason: Any, _properties: Any) -> None:
        done = self._waiting.pop(mid, None)
        if done is not None:
            done(REFUSED if getattr(reason, "is_failure", False) else ACKED)

    def _paho_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._on_message([(message.topic, bytes(message.payload), bool(message.retain))])

