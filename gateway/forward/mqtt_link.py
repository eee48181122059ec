"""One paho-mqtt 2.x client on its own network thread, with a face for the event loop.

paho (CallbackAPIVersion.VERSION2, MQTT 5, clean start) connects, reconnects with a capped
backoff (1 s doubling to 10 s) and, after a reconnect, sends again the QoS 1 messages not yet
acknowledged. Its session lives in memory only, so durability comes from the forwarders'
stored cursors, not from paho; and ``max_queued_messages`` is set (paho's default is
unlimited): ``publish`` returns False instead of queueing more, and the caller counts it.

Everything paho reports from its thread (connects, disconnects, PUBACKs, incoming messages)
is handed to the event loop in batches (one ``call_soon_threadsafe`` per burst), and every
callback given here runs on the event loop. The blocking parts of paho (DNS, TCP and TLS
connects) run on its thread, never on the loop.

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
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from gateway.forward.settings import BrokerUrl
from gateway.forward.sink import ACKED, REFUSED, Done
from gateway.logs import log

KEEPALIVE_S = 30
MAX_INFLIGHT = 100  # QoS 1 messages on the wire at once; lowered to the broker's Receive Maximum
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 10

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
        self._waiting: dict[int, Done] = {}  # mid -> done, loop thread only
        self._acks: deque[tuple[int, bool]] = deque()  # (mid, refused), from paho's thread
        self._inbox: deque[Message] = deque()
        self._events: deque[tuple[str, Any]] = deque()
        self._scheduled = False
        self._stopping = False
        self._lock = threading.Lock()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(max_queued)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
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
        client.on_connect_fail = self._paho_connect_fail
        self.client = client

    # ------------------------------------------------------------ lifecycle (event loop)
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.client.connect_async(self.url.host, self.url.port, KEEPALIVE_S, clean_start=True)
        self.client.loop_start()

    async def stop(self, final: list[tuple[str, bytes]] | None = None, timeout_s: float = 5.0) -> None:
        """Publish ``final`` (retained, QoS 1; e.g. the bridge's ``offline``), wait (bounded) for their acks,
        disconnect cleanly (no last will) and stop the network thread."""
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
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
        self.connected = False
        self._loop = None

    # ------------------------------------------------------------ publishing (event loop)
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

    # ------------------------------------------------------------ from paho's thread
    def _post(self, kind: str, value: Any) -> None:
        self._events.append((kind, value))
        self._kick()

    def _kick(self) -> None:
        with self._lock:
            if self._scheduled or self._loop is None:
                return
            self._scheduled = True
            loop = self._loop
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._drain)

    def _paho_connect(self, _client: paho.Client, _userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._post("refused", str(reason))
            return
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        if isinstance(receive_max, int) and 0 < receive_max < MAX_INFLIGHT:
            # paho does not lower its in-flight limit to the broker's Receive Maximum by itself, and its
            # setter refuses while connected: this runs before any queued message is sent again.
            self.client._max_inflight_messages = receive_max
        self._post("connect", bool(getattr(flags, "session_present", False)))

    def _paho_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        self._post("connect_fail", "")

    def _paho_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any,
                         _properties: Any) -> None:
        self._post("disconnect", str(reason))

    def _paho_publish(self, _client: paho.Client, _userdata: Any, mid: int, reason: Any, _properties: Any) -> None:
        self._acks.append((mid, bool(getattr(reason, "is_failure", False))))
        self._kick()

    def _paho_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._inbox.append((message.topic, bytes(message.payload), bool(message.retain)))
        self._kick()

    # ------------------------------------------------------------ back on the event loop
    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
        while self._events:
            kind, value = self._events.popleft()
            if kind == "connect":
                self.connected = True
                self.connects += 1
                self.last_error = ""
                log("mqtt_connected", broker=self.url.display, client_id=self.client_id, session_present=value)
                self._on_connect(bool(value))
            elif kind == "disconnect":
                was = self.connected
                self.connected = False
                if was and not self._stopping:
                    log("mqtt_disconnected", logging.WARNING, broker=self.url.display, reason=value,
                        note="reconnecting; unacknowledged messages are sent again")
                    self._on_disconnect(str(value))
            elif kind == "refused":
                if self.last_error != value:
                    log("mqtt_connect_refused", logging.ERROR, broker=self.url.display, reason=value,
                        note="check mqtt_username, mqtt_password_file and the broker's ACLs")
                self.last_error = str(value)
            elif kind == "connect_fail" and self.last_error != "unreachable":
                log("mqtt_unreachable", logging.WARNING, broker=self.url.display,
                    note="is the broker running and mqtt_url right? retrying")
                self.last_error = "unreachable"
        waiting = self._waiting
        while self._acks:
            mid, refused = self._acks.popleft()
            done = waiting.pop(mid, None)
            if done is not None:
                done(REFUSED if refused else ACKED)
        if self._inbox:
            inbox = self._inbox
            batch = [inbox.popleft() for _ in range(len(inbox))]  # paho may append meanwhile: those wait
            self._on_message(batch)
