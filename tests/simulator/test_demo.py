"""``make demo`` on SQLite and ``make demo DEMO_STORAGE=postgresql``: a fleet streams, Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from simulator.demo import dashboard_line
from tests.helpers.gateway import ROOT, free_port


def _devices(url: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(url + "/v1/devices", timeout=5) as resp:
        devices: list[dict[str, object]] = json.loads(resp.read())["devices"]
        return devices


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_demo_streams_and_stops_cleanly(tmp_path: Path, storage: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.demo", "--devices", "3", "--rate", "5", "--port", str(port),
         "--data-dir", str(tmp_path / "demo"), "--storage", storage],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    banner: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded: the demo prints its banner once the fleet is provisioned
            banner.append(line)
            if line.startswith("Edgewire demo:"):
                break
        assert banner and banner[-1].startswith("Edgewire demo:"), "".join(banner)
        expected = "PostgreSQL (postgresql://" if storage == "postgresql" else "SQLite ("
        assert expected in banner[-1]
        rest: list[str] = []
        for line in proc.stdout:  # the banner's other lines, up to "Ctrl-C stops everything."
            rest.append(line)
            if "Ctrl-C" in line:
                break
        assert any(line.startswith(f"  Data directory: {tmp_path / 'demo'} ") for line in rest), rest
        deadline = time.monotonic() + 60
        while not all(int(str(d["last_seq"])) >= 5 for d in _devices(f"http://127.0.0.1:{port}")):
            assert time.monotonic() < deadline, "the demo fleet is not being stored"
            time.sleep(0.2)
        # the CLIs need only the data directory: its gateway's storage and port (issue 20.5, 20.6)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWIRE_")}
        listed = subprocess.run([sys.executable, "-m", "gateway", "devices", "list", "--json", "--data-dir",
                                 str(tmp_path / "demo")], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert [d["device_id"] for d in json.loads(listed.stdout)] == ["demo-000", "demo-001", "demo-002"], listed
        ping = subprocess.run([sys.executable, "-m", "gateway", "command", "demo-001", "ping", "--data-dir",
                               str(tmp_path / "demo")], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert ping.returncode == 0 and json.loads(ping.stdout)["ok"] is True, ping.stderr
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    # stdout is a pipe here, not a terminal: the address names the token's file, and no token is
    # printed or logged (the gateway's banner goes to its log file)
    data_dir = tmp_path / "demo"
    token = (data_dir / "dashboard.token").read_text().strip()
    shown = "".join(rest)
    assert f"  Dashboard: http://127.0.0.1:{port}/ (operator token in {data_dir / 'dashboard.token'}; " in shown
    assert token not in shown + out and token not in (data_dir / "gateway.log").read_text()
    stopped = re.search(r"stopped: (\d+) readings generated, (\d+) stored and acknowledged, (\d+) unsent", out)
    assert stopped and int(stopped.group(2)) >= 15, out
    if storage == "postgresql":
        dsn = re.search(r"postgresql://\S+?:(\d+)/", banner[-1])
        assert dsn is not None
        with pytest.raises(ConnectionRefusedError):  # the throwaway server is gone
            socket.create_connection(("127.0.0.1", int(dsn.group(1))), timeout=5).close()


def test_on_a_terminal_the_demo_prints_the_operators_address(tmp_path: Path) -> None:
    (tmp_path / "dashboard.token").write_text("ewd_operator-token-0123456789\n")
    assert dashboard_line("http://127.0.0.1:8080", tmp_path, terminal=True) == (
        "http://127.0.0.1:8080/#token=ewd_operator-token-0123456789")
    kept = dashboard_line("http://127.0.0.1:8080", tmp_path, terminal=False)
    assert "ewd_operator" not in kept and str(tmp_path / "dashboard.token") in kept and "tokens url" in kept
