"""bench/mqtt.py (the MQTT 3.1.1 encoder and parser of the load generator), checked against the
specification's bytes and against paho-mqtt through a real Mosquitto.

Mosquitto is required (CI installs it with apt-get): the comparison in `make bench` is
meaningless without it, so a missing broker fails this test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench import mqtt
from bench.clients import MqttPublisher, Payloads, now_ms
from bench.errors import LoadgenError
from bench.servers import MosquittoServer, mosquitto_path
from bench.watchers import MqttSubscriber
from bench.wsclient import open_connection, parse_ws_url, wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("n, encoded", [
    (0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"),
    (2097151, "ffff7f"), (2097152, "80808001"), (268435455, "ffffff7f"),
])
def test_remaining_length_matches_spec_table(n: int, encoded: str) -> None:
    assert mqtt.remaining_length(n).hex() == encoded  # MQTT 3.1.1 section 2.2.3
    parser = mqtt.StreamParser()
    if n < 1000:
        packet = bytes([0x30]) + mqtt.remaining_length(n) + bytes(n)
        assert parser.feed(packet) == [(3, 0, bytes(n))]


def test_remaining_length_out_of_range() -> None:
    with pytest.raises(ValueError):
        mqtt.remaining_length(268435456)
    with pytest.raises(ValueError):
        mqtt.remaining_length(-1)


def test_malformed_remaining_length_is_refused() -> None:
    with pytest.raises(LoadgenError, match="malformed"):
        mqtt.StreamParser().feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))


def test_connect_and_publish_bytes() -> None:
    assert mqtt.connect("dev-1", keepalive=60).hex() == (
        "10" "11" "00044d515454" "04" "02" "003c" "0005" + b"dev-1".hex())
    assert mqtt.publish("a/b", b"xy").hex() == "30" "07" "0003612f62" "7879"
    assert mqtt.subscribe(1, "a/+", 0).hex() == "82" "08" "0001" "0003612f2b" "00"
    assert mqtt.pingreq() == b"\xc0\x00" and mqtt.disconnect() == b"\xe0\x00"


def test_stream_parser_any_split_and_publish_decoding() -> None:
    stream = (mqtt.publish("edgewire/d1/data", b'{"x":1}') + bytes([0x20, 0x02, 0x00, 0x00])
              + mqtt.publish("t", bytes(300)))
    for cut in range(len(stream) + 1):
        parser = mqtt.StreamParser()
        packets = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert [p[0] for p in packets] == [mqtt.PUBLISH, mqtt.CONNACK, mqtt.PUBLISH], cut
        assert mqtt.parse_publish(packets[0][1], packets[0][2]) == ("edgewire/d1/data", b'{"x":1}')
        assert mqtt.parse_publish(packets[2][1], packets[2][2]) == ("t", bytes(300))
    # QoS 1 publish: packet id skipped
    body = b"\x00\x01t\x00\x07data"
    assert mqtt.parse_publish(0x02, body) == ("t", b"data")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (required, not optional)")
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _connected_publisher(url: str, device_id: str, payloads: Payloads) -> MqttPublisher:
    uri = parse_ws_url(url)
    pub = await open_connection(lambda: MqttPublisher(uri, device_id, payloads), uri.host, uri.port, timeout=10)
    assert isinstance(pub, MqttPublisher)
    assert await wait_until(pub, lambda: pub.welcomed, 10), pub.error
    return pub


async def _subscriber(url: str) -> MqttSubscriber:
    uri = parse_ws_url(url)
    sub = await open_connection(lambda: MqttSubscriber(uri), uri.host, uri.port, timeout=10)
    assert isinstance(sub, MqttSubscriber)
    assert await wait_until(sub, lambda: sub.subscribed, 10), sub.error
    return sub


async def _publish_and_subscribe(url: str, count: int) -> MqttSubscriber:
    sub = await _subscriber(url)
    payloads = Payloads()
    pubs = [await _connected_publisher(url, f"dev-{i}", payloads) for i in range(count)]
    sent_ts = now_ms()
    for k in range(3):
        for pub in pubs:
            pub.tick(sent_ts, k)
    assert await wait_until(sub, lambda: sub.delivered >= 3 * count, 10), sub.delivered
    for pub in pubs:
        pub.send_binary(mqtt.disconnect())
        pub.close()
    sub.close()
    return sub


def test_publishers_reach_subscriber_through_mosquitto(mosquitto: MosquittoServer) -> None:
    sub = asyncio.run(_publish_and_subscribe(mosquitto.url, 5))
    assert sub.delivered == 15
    assert len(sub.latencies) == 15
    assert all(0 <= lat < 10_000 for lat in sub.latencies)


def _paho_client(name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, transport="websockets")
    client.ws_set_options(path="/mqtt")
    return client


def test_paho_subscriber_receives_the_same_bytes(mosquitto: MosquittoServer) -> None:
    """An independent MQTT implementation (paho-mqtt) decodes what our encoder sent."""
    got: list[tuple[str, bytes]] = []
    ready = threading.Event()
    done = threading.Event()
    client = _paho_client("paho-check")

    def on_connect(c: paho.Client, userdata: object, flags: object, rc: object, props: object = None) -> None:
        c.subscribe("edgewire/+/data", qos=0)

    def on_subscribe(*args: object) -> None:
        ready.set()

    def on_message(c: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        got.append((msg.topic, bytes(msg.payload)))
        if len(got) >= 2:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", mosquitto.port, keepalive=30)
    client.loop_start()
    try:
        assert ready.wait(10), "paho subscription not acknowledged"

        async def publish() -> bytes:
            pub = await _connected_publisher(mosquitto.url, "dev-p", Payloads())
            pub.tick(1764080000000, 0)
            pub.tick(1764080001000, 1)
            delivered = await asyncio.to_thread(done.wait, 10)  # the publisher stays open until paho has both
            pub.close()
            assert delivered, got
            return pub.topic

        topic = asyncio.run(publish())
    finally:
        client.loop_stop()
        client.disconnect()
    assert [t for t, _ in got] == [topic.decode(), topic.decode()]
    first = json.loads(got[0][1])
    assert first["t"] == "data" and first["seq"] == 1 and first["r"][0]["ts"] == 1764080000000
    assert 80 <= len(got[0][1]) <= 160  # the "~100-byte" payload of the issue


def test_our_subscriber_decodes_what_paho_publishes(mosquitto: MosquittoServer) -> None:
    """The other direction: our stream parser reads PUBLISH packets built by paho-mqtt (QoS 0 and 1)."""
    body = json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 21.5}, "ts": now_ms()}]}).encode()

    async def check() -> MqttSubscriber:
        sub = await _subscriber(mosquitto.url)
        client = _paho_client("paho-pub")
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.connect("127.0.0.1", mosquitto.port, keepalive=30)
        client.loop_start()
        try:
            assert await asyncio.to_thread(connected.wait, 10), "paho publisher not connected"
            for qos in (0, 1, 0):
                client.publish("edgewire/paho-1/data", body, qos=qos).wait_for_publish(10)
            assert await wait_until(sub, lambda: sub.delivered >= 3, 10), sub.delivered
        finally:
            client.loop_stop()
            client.disconnect()
            sub.close()
        return sub

    sub = asyncio.run(check())
    assert sub.delivered == 3 and len(sub.latencies) == 3
