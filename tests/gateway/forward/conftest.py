"""Shared pieces of the forwarding tests: a real Mosquitto, a paho observer, bridge factories."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.forward.mqtt import MqttBridge
from gateway.forward.settings import MQTT_PORTS, MqttSettings, parse_broker_url
from gateway.storage.base import ReadingRow, Storage
from services.mosquitto import MosquittoServer

T0 = 1_764_080_000_000


def reading(device: str, seq: int, **metrics: float) -> ReadingRow:
    return ReadingRow(device, seq, T0 + seq * 1000, T0 + seq * 1000 + 5,
                      metrics or {"temperature": 20.0 + seq % 10, "humidity": 40.0}, quality="ok")


async def until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` is truthy, looking again every few milliseconds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what}: not met within {timeout:g} s"
        await asyncio.sleep(0.01)


class Observer:
    """A paho MQTT client that records every message it receives (topic, payload, retained)."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",), client_id: str = "",
                 persistent: bool = False, username: str = "", password: str = "") -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.connects = 0
        self.topics = topics
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=not persistent)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        if username:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(15), "observer: no SUBACK"

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        self.connects += 1
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def of(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def last(self, topic: str) -> bytes | None:
        got = self.of(topic)
        return got[-1] if got else None

    def json(self, topic: str) -> Any:
        payload = self.last(topic)
        return None if not payload else orjson.loads(payload)

    def matching(self, predicate: Callable[[str], bool]) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return [m for m in self.messages if predicate(m[0])]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker() -> Iterator[MosquittoServer]:
    with MosquittoServer() as server:
        yield server


def settings(url: str, **kw: Any) -> MqttSettings:
    kw.setdefault("client_id", "edgewire-test")
    return MqttSettings(parse_broker_url("mqtt_url", url, MQTT_PORTS), **kw)


def make_bridge(url: str, storage: Storage, run_command: Any = None, window: int = 100,
                **kw: Any) -> MqttBridge:
    return MqttBridge(settings(url, **kw), storage, instance="gw1", version="0.1.0", window=window,
                      run_command=run_command)


def retained(port: int, topic_filter: str = "#") -> dict[str, bytes]:
    """Every retained message under ``topic_filter`` now (a fresh subscriber's view). After SUBACK a
    marker is published under the filter: retained messages are delivered before it, so no waiting
    for an absence."""
    marker = "edgewire-test/marker" if topic_filter == "#" else topic_filter.replace("#", "edgewire-test-marker")
    got: dict[str, bytes] = {}
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)

    def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == marker:
            done.set()
        elif msg.retain:
            got[msg.topic] = bytes(msg.payload)

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic_filter, 1)
    client.on_subscribe = lambda c, *_: c.publish(marker, b"x", qos=1)
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        assert done.wait(15), "retained(): the marker did not come back"
    finally:
        client.disconnect()
        client.loop_stop()
    return got
