"""sd_notify over a datagram socket (runtime/sdnotify.py, used by the gateway and the Pi agent)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from runtime import sdnotify


def test_notify_sends_one_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert sdnotify.notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path})
        assert server.recv(256) == b"READY=1\nSTATUS=ok"


def test_notify_abstract_socket() -> None:
    name = f"edgewire-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert sdnotify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert server.recv(64) == b"WATCHDOG=1"


def test_notify_without_systemd_is_a_no_op(tmp_path: Path) -> None:
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None
