"""The simulated publishers of the load: an Edgewire device and an MQTT publisher, one connection each.

Both send the same data-frame bytes (~115 bytes of JSON, or ~60 of CBOR with encoding "cbor": seq,
boot id, one reading of temperature, humidity and battery with ``ts`` and ``q``), so the gateway and
Mosquitto get the same load.
Each reading carries its creation time in ``ts`` (Unix ms): latency = receive time - ts.
"""

from __future__ import annotations

import random
import time
from array import array
from typing import Any

import orjson
from websockets.frames import Opcode
from websockets.protocol import OPEN
from websockets.typing import BytesLike
from websockets.uri import WebSocketURI

from bench import mqtt
from bench.outbox import BenchOutbox
from bench.session import BenchSession
from bench.wsclient import WsClient
from protocol import cbor, wire
from protocol.device import ENC_CBOR, ENC_JSON

__all__ = ["ACK_LATENCIES", "DeviceConn", "MqttPublisher", "Payloads", "dumps", "now_ms"]

_TEXT = Opcode.TEXT


def dumps(msg: Any) -> str:
    return orjson.dumps(msg).decode()


def now_ms() -> int:
    return int(time.time() * 1000)


class Payloads:
    """Realistic readings (~100-byte data frames): a table of plausible values per index."""

    def __init__(self, seed: int = 1) -> None:
        rnd = random.Random(seed)
        self.table = [
            {"temperature": round(rnd.uniform(18.0, 26.0), 2), "humidity": round(rnd.uniform(30.0, 60.0), 1),
             "battery": round(rnd.uniform(60.0, 100.0), 1)}
            for _ in range(257)]

    def metrics(self, index: int) -> dict[str, float]:
        return self.table[index % len(self.table)]


# Per process: ms from each reading's creation to the ack that confirmed it (DeviceConn).
ACK_LATENCIES: array[float] = array("d")


class DeviceConn(WsClient):
    """One Edgewire device: a BenchSession over a WsClient; readings in a BenchOutbox until acked."""

    __slots__ = ("batch", "generated", "outbox", "payloads", "ready_through", "session", "unbatched")

    def __init__(self, uri: WebSocketURI, device_id: str, token: str, payloads: Payloads, window: int = 4,
                 max_batch: int = 20, encoding: str = ENC_JSON, batch: int = 1) -> None:
        """``batch`` > 1: the device keeps readings until it has ``batch`` of them, then sends them
        in one frame (``max_batch`` becomes ``batch``); 1 sends each reading as it is taken."""
        if batch > 1:
            max_batch = batch
        session = BenchSession(device_id, token, BenchOutbox(ACK_LATENCIES), window, max_batch, orjson.loads, dumps,
                               encoding)
        super().__init__(uri, session.subprotocols())
        self.outbox = session.outbox
        self.session = session
        self.payloads = payloads
        self.generated = 0
        self.batch = max(1, batch)
        self.unbatched = 0  # readings taken since the last complete batch
        self.ready_through = 0  # batching: highest seq the device may send (its batch is complete)

    @property
    def welcomed(self) -> bool:
        return self.session.welcomed

    @property
    def rejected(self) -> int:
        return self.session.rejected

    @property
    def slowed(self) -> int:
        return self.session.slowed

    @property
    def acked(self) -> int:
        return self.session.acked

    @property
    def sent(self) -> int:
        return self.session.sent

    def on_open(self) -> None:
        self.session.negotiated(self.ws.subprotocol)
        frame = self.session.auth_frame()
        if frame is not None:
            self.send_text(frame)

    def on_message(self, opcode: int, payload: BytesLike) -> None:
        if opcode != _TEXT:
            return
        moved, reply = self.session.handle(payload)
        if reply is not None:
            self.send_text(reply)
        if moved:
            self.flush()

    def on_closed(self) -> None:
        code = self.close_code
        self.session.closed(code or None)

    def tick(self, ts: int, index: int) -> None:
        """Take one reading (timestamped ``ts``) and send what the window allows."""
        reading = self.outbox.add(self.payloads.metrics(index), ts, None, wire.QUALITY_OK)
        self.generated += 1
        if self.batch > 1:
            self.unbatched += 1
            if self.unbatched < self.batch:
                return
            self.unbatched = 0
            self.ready_through = reading.seq
            self.outbox.batch_ready(reading.seq, ts)
        self.flush()

    def send_rest(self, ts: int) -> None:
        """Batching: the run is over, so the last, incomplete batch is due now (``ts``); send it."""
        readings = self.outbox.readings
        if self.batch > 1 and self.unbatched and readings:
            self.unbatched = 0
            self.ready_through = readings[-1].seq
            self.outbox.batch_ready(self.ready_through, ts)
            self.flush()

    def flush(self) -> None:
        """Send what the window allows (nothing when every kept reading is already in flight).

        Batching: only readings of complete batches (up to ``ready_through``) go out."""
        session = self.session
        readings = self.outbox.readings
        while readings and self.ws.state is OPEN:
            last = readings[-1].seq if self.batch == 1 else min(readings[-1].seq, self.ready_through)
            if last <= session.sent_through:
                return
            frame = session.next_frame()
            if frame is None:
                return
            if isinstance(frame, str):
                self.send_text(frame)
            else:
                self.send_binary(frame)


class MqttPublisher(WsClient):
    """One MQTT publisher sending the same data-frame bytes as a device, QoS 0."""

    __slots__ = ("boot", "cbor", "device_id", "generated", "next_seq", "payloads", "sent_count", "topic",
                 "welcomed")

    def __init__(self, uri: WebSocketURI, device_id: str, payloads: Payloads, encoding: str = ENC_JSON) -> None:
        super().__init__(uri, "mqtt")
        self.cbor = encoding == ENC_CBOR
        self.device_id = device_id
        self.topic = f"edgewire/{device_id}/data".encode()
        self.payloads = payloads
        self.boot = f"{random.getrandbits(32):08x}"
        self.welcomed = False
        self.next_seq = 1
        self.generated = 0
        self.sent_count = 0

    def on_open(self) -> None:
        self.send_binary(mqtt.connect(self.device_id, keepalive=120))

    def on_message(self, opcode: int, payload: BytesLike) -> None:
        # CONNACK: 0x20 0x02 flags rc (sent in its own frame by Mosquitto; parse defensively)
        if len(payload) >= 4 and payload[0] >> 4 == mqtt.CONNACK:
            if payload[3] == 0:
                self.welcomed = True
            else:
                self.error = f"CONNACK return code {payload[3]}"
                self.close()

    def tick(self, ts: int, index: int) -> None:
        reading = wire.Reading(self.next_seq, self.payloads.metrics(index), ts, None, "ok")
        binary = cbor.encode_data(self.next_seq, [reading], self.boot) if self.cbor else None
        data = orjson.dumps(wire.data_message(self.next_seq, [reading], self.boot)) if binary is None else bytes(binary)
        self.next_seq += 1
        self.generated += 1
        if self.welcomed and self.send_binary(mqtt.publish(self.topic, data)):
            self.sent_count += 1

    def flush(self) -> None:
        """QoS 0 has nothing to resend."""

    @property
    def rejected(self) -> int:
        return 0

    @property
    def slowed(self) -> int:
        return 0

    @property
    def acked(self) -> int:
        return 0

    @property
    def sent(self) -> int:
        return self.sent_count
