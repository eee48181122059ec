"""The bridge's control messages on the wire: a window of unacknowledged publishes, a bounded event queue.

Configs, availability and status messages are published from "dirty" sets the bridge keeps
(gateway/forward/mqtt.py), at most ``CONTROL_WINDOW`` unacknowledged at a time. Alert events
and command results wait in a queue of ``EVENT_QUEUE`` messages; when it is full the oldest is
dropped and counted (``dropped``). Each acknowledged publish is counted by kind (``published``),
each refused one (an MQTT 5 reason code: check the broker's ACLs) too (``refused``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from gateway.forward.mqtt_link import MqttLink
from gateway.forward.sink import REFUSED
from gateway.logs import log

CONTROL_WINDOW = 200  # control messages (configs, availability, events) published and not yet acked
EVENT_QUEUE = 1000  # alert events and command results waiting for the broker
KINDS = ("config", "availability", "status", "removal", "alert", "command_result")


class ControlChannel:
    """Publishes through ``link`` within the window; ``wake`` is called when room frees up."""

    def __init__(self, link: MqttLink, wake: Callable[[], None]) -> None:
        self.link = link
        self.wake = wake
        self.inflight = 0
        self.events: deque[tuple[str, bytes]] = deque()
        self.dropped: dict[str, int] = {"alert": 0, "command_result": 0}  # forced drops of control messages
        self.refused: dict[str, int] = {}  # control messages the broker refused, by kind
        self.published: dict[str, int] = dict.fromkeys(KINDS, 0)

    @property
    def room(self) -> bool:
        return self.inflight < CONTROL_WINDOW

    def publish(self, topic: str, payload: bytes, retain: bool, kind: str) -> bool:
        """Hand one message to the link; False when it cannot take it now (try again at the next wake)."""
        self.inflight += 1
        if self.link.publish(topic, payload, retain=retain, done=lambda outcome: self._done(kind, outcome)):
            return True
        self.inflight -= 1
        return False

    def _done(self, kind: str, outcome: int) -> None:
        self.inflight -= 1
        if outcome == REFUSED:
            self.refused[kind] = self.refused.get(kind, 0) + 1
            log("mqtt_message_refused", logging.ERROR, kind=kind,
                note="the broker refused it: check its ACLs for the topics in docs/mqtt.md")
        else:
            self.published[kind] += 1
        self.wake()

    def queue_event(self, topic: str, payload: bytes) -> None:
        if len(self.events) >= EVENT_QUEUE:
            old_topic, _ = self.events.popleft()
            dropped_kind = _event_kind(old_topic)
            self.dropped[dropped_kind] += 1
            log("mqtt_event_dropped", logging.WARNING, kind=dropped_kind, queue=EVENT_QUEUE,
                note="the broker has been unreachable; oldest event dropped")
        self.events.append((topic, payload))
        self.wake()

    def send_events(self) -> bool:
        """Publish queued events while there is room; False if the link refused one (stop for now)."""
        while self.events and self.room:
            topic, payload = self.events[0]
            if not self.publish(topic, payload, False, _event_kind(topic)):
                return False
            self.events.popleft()
        return True


def _event_kind(topic: str) -> str:
    return "command_result" if topic.endswith("/result") else "alert"
