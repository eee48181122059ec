"""services.mosquitto: a real broker on free loopback ports; passwords, TLS, websockets, persistence, restart."""

from __future__ import annotations

import resource
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from services.mosquitto import MosquittoServer, make_test_certificates


def _client(transport: str = "tcp") -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, transport=transport)  # type: ignore[arg-type]


def _connect(client: mqtt.Client, host: str, port: int) -> int:
    """Connect and return the CONNACK reason code's value (0 = accepted)."""
    got = threading.Event()
    codes: list[int] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        codes.append(int(reason.value))  # type: ignore[attr-defined]
        got.set()

    client.on_connect = on_connect
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        assert got.wait(10), "no CONNACK"
    finally:
        client.loop_stop()
    return codes[0]


def _retained(port: int, topic: str, user: str | None = None, password: str | None = None) -> bytes | None:
    """The retained message of ``topic``, or None. After SUBACK the client publishes a marker to the
    same topic: the broker delivers a retained message before it, so no waiting for an absence."""
    client = _client()
    if user:
        client.username_pw_set(user, password)
    got = threading.Event()
    payload: list[tuple[bytes, bool]] = []

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload.append((msg.payload, msg.retain))
        got.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.on_subscribe = lambda c, *_: c.publish(topic, b"marker", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert got.wait(10), "neither the retained message nor the marker arrived"
    finally:
        client.disconnect()
        client.loop_stop()
    first, retained = payload[0]
    return first if retained else None


def test_passwords_tls_websockets_and_persistence(tmp_path: Path) -> None:
    files = make_test_certificates(tmp_path / "tls")
    assert files.key.stat().st_mode & 0o077 == 0
    with MosquittoServer(users={"alice": "s3cret"}, tls=files, websockets=True, persistence=True) as broker:
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert broker.base_dir is not None and broker.base_dir.stat().st_mode & 0o077 == 0
        # Anonymous and wrong passwords refused (5 = not authorized, 3.1.1), the right one accepted.
        assert _connect(_client(), "127.0.0.1", broker.port) != 0
        wrong = _client()
        wrong.username_pw_set("alice", "nope")
        assert _connect(wrong, "127.0.0.1", broker.port) != 0
        alice = _client()
        alice.username_pw_set("alice", "s3cret")
        assert _connect(alice, "127.0.0.1", broker.port) == 0
        alice.publish("t/r", b"kept", qos=1, retain=True).wait_for_publish(10)
        alice.disconnect()
        # TLS: the test CA verifies the broker's certificate for localhost.
        secure = _client()
        secure.tls_set(ca_certs=str(files.ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        secure.username_pw_set("alice", "s3cret")
        assert _connect(secure, "localhost", int(broker.tls_url.rsplit(":", 1)[1])) == 0
        secure.disconnect()
        # Websockets on its own port.
        ws = _client("websockets")
        ws.ws_set_options(path="/mqtt")
        ws.username_pw_set("alice", "s3cret")
        assert _connect(ws, "127.0.0.1", broker.ws_port) == 0
        ws.disconnect()
        # The open-file limit is raised for the broker (Mosquitto does not raise its own).
        limits = Path(f"/proc/{broker.pid}/limits").read_text()
        soft = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max open files"))
        assert soft == str(resource.getrlimit(resource.RLIMIT_NOFILE)[1]) or soft == "unlimited"
        # A clean stop saves retained messages; the restart keeps every port.
        ports = (broker.port, broker.tls_port, broker.ws_port)
        broker.restart()
        assert (broker.port, broker.tls_port, broker.ws_port) == ports
        assert _retained(broker.port, "t/r", "alice", "s3cret") == b"kept"


def test_without_persistence_a_restart_forgets_retained_messages() -> None:
    with MosquittoServer(acl="topic readwrite #\n") as broker:
        client = _client()
        assert _connect(client, "127.0.0.1", broker.port) == 0
        client.loop_start()
        client.publish("t/r", b"gone", qos=1, retain=True).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        assert _retained(broker.port, "t/r") == b"gone"
        broker.restart()
        assert _retained(broker.port, "t/r") is None
