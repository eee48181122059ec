"""The gateway under systemd: READY=1 once listening, WATCHDOG=1 while its loop is healthy, the unit file."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gateway.sd_notify import ServiceNotifier
from tests.helpers.gateway import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "gateway" / "systemd" / "edgewire-gateway.service"
AGENT_UNIT = ROOT / "edge" / "systemd" / "edgewire-agent.service"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_notifier(clock: FakeClock, usec: str = "10000000") -> tuple[ServiceNotifier, list[str]]:
    sent: list[str] = []

    def notify(state: str, environ: dict[str, str] | None) -> bool:
        sent.append(state)
        return True

    return ServiceNotifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": usec}, clock, notify), sent


def test_pings_once_per_interval_while_ticks_are_on_time() -> None:
    clock = FakeClock()
    notifier, sent = make_notifier(clock)  # WatchdogSec=10 s: ping every 5 s
    notifier.ready("listening on 127.0.0.1:1")
    assert sent == ["READY=1\nSTATUS=listening on 127.0.0.1:1"]
    pings = 0
    for _ in range(12):
        clock.now += notifier.tick_s
        pings += notifier.tick()
    assert pings == 3 and sent.count("WATCHDOG=1") == 3  # t=1, 6 and 11 s


def test_a_stalled_loop_gets_no_ping_until_it_ticks_on_time_again() -> None:
    clock = FakeClock()
    notifier, sent = make_notifier(clock)
    notifier.ready("ok")
    clock.now += 1
    assert notifier.tick()
    clock.now += 7  # the loop was blocked for 6 s more than one tick: longer than the 5 s interval
    assert not notifier.tick() and notifier.stalled
    clock.now += 1
    assert notifier.tick()  # on time again, and 8 s since the last ping
    assert sent.count("WATCHDOG=1") == 2


def test_nothing_is_sent_without_a_watchdog() -> None:
    sent: list[str] = []
    notifier = ServiceNotifier({}, FakeClock(), lambda state, env: bool(sent.append(state)))
    assert notifier.interval is None and not notifier.tick()
    assert sent == []


def test_serve_notifies_ready_after_listening_then_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(sock_path)
        server.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping every 0.5 s
        gw = GatewayProcess(tmp_path)
        with gw:
            ready = server.recv(256).decode()
            assert ready.startswith("READY=1\nSTATUS=listening on 127.0.0.1:"), ready
            with urllib.request.urlopen(gw.http_url + "/healthz", timeout=5) as resp:
                assert resp.status == 200
            assert server.recv(64) == b"WATCHDOG=1"
            assert server.recv(64) == b"WATCHDOG=1"
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGSTOP)  # a frozen gateway: no pings
            try:
                server.settimeout(1.5)
                with pytest.raises(TimeoutError):
                    while True:  # the datagrams queued before the stop, then silence
                        assert server.recv(64) == b"WATCHDOG=1"
            finally:
                gw.proc.send_signal(signal.SIGCONT)
            server.settimeout(20)
            assert server.recv(64) == b"WATCHDOG=1"  # running on time again: pings resume
        assert gw.proc.returncode == 0


def test_unit_file_is_hardened_like_the_agents() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "User=edgewire",
                 "StateDirectory=edgewire-gateway", "UMask=0077",
                 "ExecStart=/opt/edgewire/venv/bin/edgewire-gateway serve --config /etc/edgewire/gateway.toml"):
        assert line in text, line
    agent = AGENT_UNIT.read_text()
    shared = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
              "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectClock=yes",
              "ProtectHostname=yes", "ProtectProc=invisible", "RestrictNamespaces=yes", "RestrictRealtime=yes",
              "RestrictSUIDSGID=yes", "LockPersonality=yes", "RemoveIPC=yes", "CapabilityBoundingSet=\n",
              "SystemCallArchitectures=native", "SystemCallFilter=@system-service", "UMask=0077")
    for line in shared:
        assert line in agent and line in text, line
    assert "PrivateDevices=yes" in text and "ProtectKernelTunables=yes" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """The shipped unit with ExecStart pointed at this venv's console script verifies cleanly."""
    script = Path(sys.executable).parent / "edgewire-gateway"
    assert script.exists(), "install the project (pip install -e '.[gateway]') to get the console script"
    unit = tmp_path / "edgewire-gateway.service"
    unit.write_text(UNIT.read_text().replace("/opt/edgewire/venv/bin/edgewire-gateway", str(script)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in proc.stderr.splitlines() if "edgewire-gateway.service" in line]
    assert not problems, problems
