"""services.redis and services.nats: real servers on free loopback ports; restart on the same port; crash."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from services.errors import NotInstalledError, ServiceError
from services.nats import NatsServer
from services.redis import RedisServer


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _redis(url: str, *command: str) -> object:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return client.execute_command(*command)
    finally:
        client.close()


def test_redis_restart_keeps_the_port_and_starts_empty() -> None:
    with RedisServer() as server:
        port, base = server.port, server.base_dir
        assert base is not None and base.stat().st_mode & 0o077 == 0
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert _redis(server.url, "SET", "k", "v") is True
        assert _redis(server.url, "CONFIG", "GET", "bind") == {b"bind": b"127.0.0.1"}
        server.restart()
        assert server.port == port and server.running
        assert _redis(server.url, "GET", "k") is None  # --save '' --appendonly no: nothing kept
        server.stop("kill")
        assert not server.running and not _listening(port)
        server.start()
        assert _redis(server.url, "PING") is True
    assert not base.exists() and not _listening(port)


def test_persistent_redis_keeps_what_was_written_across_a_crash() -> None:
    with RedisServer(persistent=True) as server:
        _redis(server.url, "SET", "kept", "1")
        server.stop("kill")  # appendfsync always: the write was on disk before the reply
        server.start()
        assert _redis(server.url, "GET", "kept") == b"1"


def test_nats_jetstream_store_survives_a_restart() -> None:
    import nats

    async def scenario(server: NatsServer) -> None:
        nc = await nats.connect(server.url, allow_reconnect=False)
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        await js.publish("probe.a", b"kept")
        await nc.close()
        port = server.port
        server.restart("kill")
        assert server.port == port
        nc = await nats.connect(server.url, allow_reconnect=False)
        msg = await nc.jetstream().get_last_msg("PROBE", "probe.a")
        assert msg.data == b"kept"
        await nc.close()

    with NatsServer() as server:
        assert server.url.startswith("nats://127.0.0.1:")
        base = server.base_dir
        assert base is not None and (base / "nats.conf").exists()
        asyncio.run(scenario(server))
    assert not base.exists()


def test_nats_listens_on_loopback_only() -> None:
    with NatsServer(jetstream=False) as server:
        greeting = server._talk(b"")
        assert b'"host":"127.0.0.1"' in greeting
        assert b'"jetstream"' not in greeting


@pytest.mark.parametrize("kind", [RedisServer, NatsServer])
def test_missing_binary_says_what_to_install(kind: type[RedisServer] | type[NatsServer], tmp_path: Path) -> None:
    server = kind(binary=str(tmp_path / "nothing-here"))
    with pytest.raises(NotInstalledError, match="apt-get install -y"):
        server.start()
    server.cleanup()


def test_a_server_that_cannot_bind_reports_its_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RedisServer(port=port, start_timeout_s=10)
        with pytest.raises(ServiceError, match="exited at start"):
            server.start()
        server.cleanup()


def test_bad_stop_mode_is_refused() -> None:
    with RedisServer() as server, pytest.raises(ServiceError, match="stop mode"):
        server.stop("gently")
