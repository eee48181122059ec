"""The clients that measure delivery: the gateway's dashboard stream and an MQTT subscriber.

Each reading carries its creation time in ``ts`` (Unix ms, same host clock), so one
latency sample is receive time - ts.
"""

from __future__ import annotations

import os
import time
from array import array
from typing import Any

import orjson
from websockets.typing import BytesLike
from websockets.uri import WebSocketURI

from bench import mqtt
from bench.errors import LoadgenError
from bench.wsclient import WsClient

__all__ = ["DashboardWatcher", "MqttSubscriber"]


class DashboardWatcher(WsClient):
    """Dashboard-stream client: one latency sample per device update carrying a newer reading time.

    The hub coalesces per device (latest values only), so a device that sent twice within
    one interval yields one sample; ``delivered`` counts updates, not readings. ``only`` /
    ``skip``: record only devices whose id starts with / does not start with that prefix (the
    cluster bench keeps the devices of other instances: cross-instance latency).
    """

    __slots__ = ("delivered", "last_time", "latencies", "only", "recording", "skip", "snapshots", "updates")

    def __init__(self, uri: WebSocketURI, only: str = "", skip: str = "") -> None:
        super().__init__(uri)
        self.only = only
        self.skip = skip
        self.last_time: dict[str, int] = {}
        self.latencies: array[float] = array("d")
        self.delivered = 0
        self.snapshots = 0
        self.updates = 0
        self.recording = True

    def on_message(self, opcode: int, payload: BytesLike) -> None:
        received = time.time() * 1000.0
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("t")
        if kind == "snapshot":
            self.snapshots += 1
            for view in msg.get("devices") or []:
                if isinstance(view, dict):
                    self._see(view.get("id"), view, received, False)
        elif kind == "update":
            self.updates += 1
            devices = msg.get("devices")
            if isinstance(devices, dict):
                for device_id, view in devices.items():
                    if isinstance(view, dict):
                        self._see(device_id, view, received, self.recording)

    def _see(self, device_id: Any, view: dict[str, Any], received: float, record: bool) -> None:
        latest = view.get("latest")
        if not isinstance(latest, dict) or not isinstance(device_id, str):
            return
        newest = 0
        for pair in latest.values():
            if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], int) and pair[1] > newest:
                newest = pair[1]
        if not newest:
            return
        if newest > self.last_time.get(device_id, 0):
            self.last_time[device_id] = newest
            if record and device_id.startswith(self.only) and not (self.skip and device_id.startswith(self.skip)):
                self.delivered += 1
                self.latencies.append(received - newest)


class MqttSubscriber(WsClient):
    """MQTT subscriber to ``edgewire/+/data``: one latency sample per reading received."""

    __slots__ = ("delivered", "latencies", "parser", "recording", "subscribed", "topic")

    def __init__(self, uri: WebSocketURI, topic: str = "edgewire/+/data") -> None:
        super().__init__(uri, "mqtt")
        self.parser = mqtt.StreamParser()
        self.topic = topic
        self.subscribed = False
        self.delivered = 0
        self.latencies: array[float] = array("d")
        self.recording = True

    def on_open(self) -> None:
        self.send_binary(mqtt.connect(f"bench-sub-{os.getpid()}", keepalive=120))

    def on_message(self, opcode: int, payload: BytesLike) -> None:
        received = time.time() * 1000.0
        try:
            packets = self.parser.feed(payload)
        except LoadgenError as err:
            self.error = str(err)
            self.close()
            return
        for ptype, flags, body in packets:
            if ptype == mqtt.PUBLISH:
                if self.recording:
                    self._record(mqtt.parse_publish(flags, body)[1], received)
            elif ptype == mqtt.CONNACK:
                if len(body) >= 2 and body[1] == 0:
                    self.send_binary(mqtt.subscribe(1, self.topic, 0))
                else:
                    self.error = "CONNACK refused"
            elif ptype == mqtt.SUBACK:
                self.subscribed = True

    def _record(self, data: bytes, received: float) -> None:
        try:
            readings = orjson.loads(data)["r"]
            stamps = [item["ts"] for item in readings]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        for ts in stamps:
            if isinstance(ts, int | float):
                self.delivered += 1
                self.latencies.append(received - ts)
