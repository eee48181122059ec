"""The MQTT sink: each stored reading the Forwarder hands it to ``<prefix>/<device>/state``.

QoS 1, retained (the topic holds the device's latest reading, as Home Assistant expects of a
state topic), acked on the PUBACK (gateway/forward/mqtt_link.py). It publishes through a
link it is given: in the gateway's process the bridge's own connection (one client id, one
last will), in the forwarding worker process a connection of its own
(``<client id>-readings``, gateway/forward/worker.py).
"""

from __future__ import annotations

from typing import Any

from gateway.forward.discovery import Topics
from gateway.forward.mqtt_link import MqttLink
from gateway.forward.payload import reading_json
from gateway.forward.sink import FAILED, Done, Sink
from gateway.storage.base import ReadingRow

SINK_NAME = "mqtt"


class MqttSink(Sink):
    name = SINK_NAME

    def __init__(self, link: MqttLink, topics: Topics, own_link: bool = False) -> None:
        super().__init__()
        self.link = link
        self.topics = topics
        self.own_link = own_link  # start and stop the link with the sink (the worker's own connection)
        link.listeners.append(self._changed)

    def _changed(self) -> None:
        self.changed()

    async def start(self) -> None:
        if self.own_link:
            self.link.start()

    async def stop(self) -> None:
        if self.own_link:
            await self.link.stop()

    @property
    def ready(self) -> bool:
        return self.link.connected

    def send(self, reading: ReadingRow, done: Done) -> None:
        if not self.link.publish(self.topics.state(reading.device_id), reading_json(reading), retain=True, done=done):
            done(FAILED)  # paho's bounded queue is full: the forwarder sends it again later

    def health(self) -> dict[str, Any]:
        return {"state": "ok" if self.link.connected else "connecting", "broker": self.link.url.display,
                "error": self.link.last_error or None}
