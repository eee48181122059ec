"""MQTT 3.1.1 encoder/parser of the load generator, and the client against a real Mosquitto.

Mosquitto is required (CI installs it with apt-get): the comparison in `make bench` is
meaningless without it, so a missing broker fails this test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import MosquittoServer, mosquitto_path
from simulator import loadgen as lg

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("n, encoded", [
    (0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"),
    (2097151, "ffff7f"), (2097152, "80808001"), (268435455, "ffffff7f"),
])
def test_remaining_length_matches_spec_table(n: int, encoded: str) -> None:
    assert lg.mqtt_remaining_length(n).hex() == encoded  # MQTT 3.1.1 section 2.2.3
    parser = lg.MqttStreamParser()
    if n < 1000:
        packet = bytes([0x30]) + lg.mqtt_remaining_length(n) + bytes(n)
        assert parser.feed(packet) == [(3, 0, bytes(n))]


def test_remaining_length_out_of_range() -> None:
    with pytest.raises(ValueError):
        lg.mqtt_remaining_length(268435456)


def test_connect_and_publish_bytes() -> None:
    assert lg.mqtt_connect("dev-1", keepalive=60).hex() == (
        "10" "11" "00044d515454" "04" "02" "003c" "0005" + b"dev-1".hex())
    assert lg.mqtt_publish("a/b", b"xy").hex() == "30" "07" "0003612f62" "7879"
    assert lg.mqtt_subscribe(1, "a/+", 0).hex() == "82" "08" "0001" "0003612f2b" "00"


def test_stream_parser_any_split_and_publish_decoding() -> None:
    stream = (lg.mqtt_publish("edgewire/d1/data", b'{"x":1}') + bytes([0x20, 0x02, 0x00, 0x00])
              + lg.mqtt_publish("t", bytes(300)))
    for cut in range(len(stream) + 1):
        parser = lg.MqttStreamParser()
        packets = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert [p[0] for p in packets] == [lg.MQTT_PUBLISH, lg.MQTT_CONNACK, lg.MQTT_PUBLISH], cut
        assert lg.mqtt_parse_publish(packets[0][1], packets[0][2]) == ("edgewire/d1/data", b'{"x":1}')
        assert lg.mqtt_parse_publish(packets[2][1], packets[2][2]) == ("t", bytes(300))
    # QoS 1 publish: packet id skipped
    body = b"\x00\x01t\x00\x07data"
    assert lg.mqtt_parse_publish(0x02, body) == ("t", b"data")


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


async def _publish_and_subscribe(url: str, count: int) -> tuple[lg.MqttSubscriber, list[bytes]]:
    host, port, path = lg.parse_ws_url(url)
    factory = lg._request_factory(host, port, path, "mqtt")
    sub = await lg.open_connection(lambda: lg.MqttSubscriber(factory), host, port, timeout=10)
    assert isinstance(sub, lg.MqttSubscriber)
    assert await lg.wait_until(sub, lambda: sub.subscribed, 10), sub.error
    payloads = lg.Payloads()
    pubs = []
    for i in range(count):
        pub = await lg.open_connection(lambda i=i: lg.MqttPublisher(factory, f"dev-{i}", payloads),  # type: ignore[misc]
                                       host, port, timeout=10)
        assert isinstance(pub, lg.MqttPublisher)
        assert await lg.wait_until(pub, lambda pub=pub: pub.welcomed, 10), pub.error  # type: ignore[misc]
        pubs.append(pub)
    sent_ts = lg.now_ms()
    for k in range(3):
        for pub in pubs:
            pub.tick(sent_ts, k)
    assert await lg.wait_until(sub, lambda: sub.delivered >= 3 * count, 10), sub.delivered
    for pub in pubs:
        pub.send_binary(lg.mqtt_disconnect())
        pub.close()
    sub.close()
    return sub, [p.topic for p in pubs]


def test_publishers_reach_subscriber_through_mosquitto(mosquitto: MosquittoServer) -> None:
    sub, _ = asyncio.run(_publish_and_subscribe(mosquitto.url, 5))
    assert sub.delivered == 15
    assert len(sub.latencies) == 15
    assert all(0 <= lat < 10_000 for lat in sub.latencies)


def test_paho_subscriber_receives_the_same_bytes(mosquitto: MosquittoServer) -> None:
    """An independent MQTT implementation (paho-mqtt) decodes what our encoder sent."""
    import paho.mqtt.client as paho

    got: list[tuple[str, bytes]] = []
    ready = threading.Event()
    done = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="paho-check", transport="websockets")
    client.ws_set_options(path="/mqtt")

    def on_connect(c: paho.Client, userdata: object, flags: object, rc: object, props: object = None) -> None:
        c.subscribe("edgewire/+/data", qos=0)

    def on_subscribe(*args: object) -> None:
        ready.set()

    def on_message(c: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        got.append((msg.topic, msg.payload))
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
            host, port, path = lg.parse_ws_url(mosquitto.url)
            factory = lg._request_factory(host, port, path, "mqtt")
            payloads = lg.Payloads()
            pub = await lg.open_connection(lambda: lg.MqttPublisher(factory, "dev-p", payloads), host, port)
            assert isinstance(pub, lg.MqttPublisher)
            assert await lg.wait_until(pub, lambda: pub.welcomed, 10), pub.error
            pub.tick(1764080000000, 0)
            pub.tick(1764080001000, 1)
            await asyncio.sleep(0.3)
            pub.close()
            return pub.topic

        topic = asyncio.run(publish())
        assert done.wait(10), got
    finally:
        client.loop_stop()
        client.disconnect()
    assert [t for t, _ in got] == [topic.decode(), topic.decode()]
    import json

    first = json.loads(got[0][1])
    assert first["t"] == "data" and first["seq"] == 1 and first["r"][0]["ts"] == 1764080000000
    assert 80 <= len(got[0][1]) <= 160  # the "~100-byte" payload of the issue
