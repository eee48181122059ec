"""The gateway's CLIs, as a new user meets them: every expected failure is one line on stderr that
says what to do, with a non-zero exit and no traceback (issue 15.11)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from gateway.cli.main import parse_args
from gateway.config import load_config
from tests.helpers.gateway import ROOT, GatewayProcess, free_port


def gateway_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWIRE_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**base, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_serve_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = gateway_cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "gw"))
    one_line_error(proc, f"127.0.0.1:{port}", "in use", "--port")
    assert proc.returncode == 2


def test_serve_with_an_unloadable_tls_certificate_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'tls_cert = "{tmp_path}/missing.pem"\ntls_key = "{tmp_path}/missing.key"\n')
    proc = gateway_cli("serve", "--config", str(config), "--port", "0", "--data-dir", str(tmp_path / "gw"))
    one_line_error(proc, "tls_cert", "missing.pem")


@pytest.fixture
def gw(tmp_path: Path) -> GatewayProcess:
    gateway = GatewayProcess(tmp_path)
    gateway.start()
    yield gateway  # type: ignore[misc]
    gateway.stop()
    gateway.kill()


def test_command_finds_the_gateway_from_edgewire_port_and_the_config(gw: GatewayProcess, tmp_path: Path) -> None:
    token = gw.register("cli-dev")
    config = tmp_path / "cli.toml"
    config.write_text(f'port = {gw.port}\ndata_dir = "{gw.data_dir}"\n')

    async def device(*command: str, env: dict[str, str]) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
        async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.recv()
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(None, lambda: gateway_cli(*command, env=env))
            cmd = json.loads(await asyncio.wait_for(ws.recv(), 30))
            await ws.send(json.dumps({"t": "result", "id": cmd["id"], "ok": True, "msg": "done"}))
            return cmd, await pending

    # EDGEWIRE_PORT, and key=value after the options
    cmd, proc = asyncio.run(device("command", "cli-dev", "set_interval", "--data-dir", str(gw.data_dir),
                                   "--timeout", "20", "seconds=30", env={"EDGEWIRE_PORT": str(gw.port)}))
    assert proc.returncode == 0, proc.stderr
    assert cmd["name"] == "set_interval" and cmd["args"] == {"seconds": 30}
    assert json.loads(proc.stdout)["msg"] == "done"
    # the config file: port and data_dir (so the admin token is found)
    cmd, proc = asyncio.run(device("command", "cli-dev", "ping", "--config", str(config), env={}))
    assert proc.returncode == 0, proc.stderr
    assert cmd["name"] == "ping", cmd


def test_command_with_a_wrong_admin_token_is_one_line(gw: GatewayProcess) -> None:
    proc = gateway_cli("command", "x", "ping", "--url", gw.url, "--admin-token", "ewa_wrong")
    one_line_error(proc, "admin token was refused", "401", "--admin-token")


def admin_token_file(directory: Path) -> None:
    path = directory / "admin.token"
    path.write_text("ewa_" + "x" * 40 + "\n")
    path.chmod(0o600)


def test_command_to_no_gateway_is_one_line(tmp_path: Path) -> None:
    admin_token_file(tmp_path)
    port = free_port()
    proc = gateway_cli("command", "x", "ping", "--data-dir", str(tmp_path), env={"EDGEWIRE_PORT": str(port)})
    one_line_error(proc, f"127.0.0.1:{port}", "connection refused", "is the gateway running")


def test_command_without_an_admin_token_and_bad_arguments_are_one_line(tmp_path: Path) -> None:
    one_line_error(gateway_cli("command", "x", "ping", "--data-dir", str(tmp_path)), "no admin token")
    admin_token_file(tmp_path)
    one_line_error(gateway_cli("command", "x", "set_interval", "thirty", "--data-dir", str(tmp_path)),
                   "key=value")


def test_key_value_arguments_may_follow_the_options() -> None:
    args = parse_args(["command", "S-1", "set_thresholds", "--timeout", "5", "high=30", "low=20"])
    assert args.args == ["high=30", "low=20"] and args.timeout == 5.0
    args = parse_args(["command", "S-1", "set_output", "output=relay", "--timeout", "5", "on=true"])
    assert args.args == ["output=relay", "on=true"]
    with pytest.raises(SystemExit):
        parse_args(["serve", "port=9"])  # only command takes key=value


@pytest.mark.parametrize(("toml", "env", "needle"), [
    ('[[alerts]]\nmetric = "temperature"\nbelow = "cold"\n', {}, "alerts: rule 1: below: must be a number, not 'cold'"),
    ('[[alerts]]\nmetric = "temperature"\nabove = "hot"\n', {}, "alerts: rule 1: above: must be a number, not 'hot'"),
    ('[[alerts]]\nmetric = "temperature"\nabove = 30\nbelow = 5\n', {}, "alerts: rule 1: unknown key 'below'"),
    ("", {"EDGEWIRE_PORT": "eighty"}, "port: invalid value 'eighty' (expected an integer)"),
    ("", {"EDGEWIRE_RATE": "fast"}, "rate: invalid value 'fast' (expected a number)"),
    ("port = 8080.5\n", {}, "port: invalid value 8080.5 (expected an integer)"),
    ("[gateway]\nhost = 5\n", {}, "host: invalid value 5 (expected a string)"),
])
def test_config_errors_speak_of_settings_not_python(tmp_path: Path, toml: str, env: dict[str, str],
                                                    needle: str) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(toml)
    line = one_line_error(gateway_cli("serve", "--config", str(config), "--data-dir", str(tmp_path), env=env),
                          needle)
    for internal in ("__init__", "invalid literal", "unexpected keyword", "could not convert"):
        assert internal not in line


def test_unknown_edgewire_variables_are_warned_about(tmp_path: Path) -> None:
    warnings: list[str] = []
    config = load_config(env={"EDGEWIRE_PROT": "9000", "EDGEWIRE_ALERTS": "x", "EDGEWIRE_TOKEN_KEY": "ab" * 32,
                              "EDGEWIRE_RATE": "5"}, warn=warnings.append)
    assert config.port == 8080 and config.rate == 5.0
    assert warnings == ["EDGEWIRE_ALERTS is ignored: alert rules go in the config file ([[alerts]])",
                        "EDGEWIRE_PROT is not a gateway setting and is ignored (did you mean EDGEWIRE_PORT?); "
                        "see docs/configuration.md"]
    # and from the CLI, on stderr, before the one-line error (here: no admin token)
    proc = gateway_cli("command", "x", "ping", "--data-dir", str(tmp_path), env={"EDGEWIRE_PROT": "1"})
    assert proc.stderr.startswith("warning: EDGEWIRE_PROT is not a gateway setting")
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no admin token")


# ---------------------------------------------------------------- issue 20: a new user's first hour, round two
async def answering_device(gw: GatewayProcess, token: str, command: tuple[str, ...], env: dict[str, str],
                           ok: bool = True) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    """Run ``gateway command ...`` while a device is online and answers its command (ok or refused)."""
    async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(None, lambda: gateway_cli(*command, env=env))
        cmd = json.loads(await asyncio.wait_for(ws.recv(), 30))
        await ws.send(json.dumps({"t": "result", "id": cmd["id"], "ok": ok,
                                  "msg": "done" if ok else "set_output: no output 'fan' (outputs: led)"}))
        return cmd, await pending


def test_a_running_gateway_leaves_its_address_and_storage_in_its_data_directory(gw: GatewayProcess,
                                                                                tmp_path: Path) -> None:
    address = json.loads((gw.data_dir / "gateway.addr").read_text())
    assert address["url"] == f"ws://127.0.0.1:{gw.port}" and address["port"] == gw.port
    assert address["pid"] == gw.proc.pid  # type: ignore[union-attr]
    assert (gw.data_dir / "storage").read_text() == "sqlite\n"
    for name in ("gateway.addr", "storage"):
        assert (gw.data_dir / name).stat().st_mode & 0o077 == 0
    # `command` finds the gateway's port from its data directory alone (issue 20.6: make demo PORT=18080)
    token = gw.register("addr-dev")
    _cmd, proc = asyncio.run(answering_device(gw, token, ("command", "addr-dev", "ping", "--data-dir",
                                                         str(gw.data_dir)), env={}))
    assert proc.returncode == 0 and json.loads(proc.stdout)["msg"] == "done", proc.stderr
    assert gw.stop() == 0
    assert not (gw.data_dir / "gateway.addr").exists()  # a clean stop removes it; the storage stays
    assert (gw.data_dir / "storage").exists()


def test_a_stale_address_file_is_ignored_with_a_note(tmp_path: Path) -> None:
    admin_token_file(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=30)
    port = free_port()
    (tmp_path / "gateway.addr").write_text(json.dumps({"url": f"ws://127.0.0.1:{free_port()}",
                                                       "pid": int(gone.stdout)}))
    config = tmp_path / "gw.toml"
    config.write_text(f'port = {port}\ndata_dir = "{tmp_path}"\n')
    proc = gateway_cli("command", "x", "ping", "--config", str(config))
    note, error = proc.stderr.strip().splitlines()
    assert note.startswith("note: ignoring ") and f"(pid {gone.stdout.strip()}) is not running" in note
    assert error.startswith("error: ") and f"127.0.0.1:{port}" in error  # the config's address instead
    assert "Traceback" not in proc.stderr


def test_a_refused_command_is_one_error_line_and_an_http_url_is_accepted(gw: GatewayProcess) -> None:
    token = gw.register("refuser")
    cmd, proc = asyncio.run(answering_device(
        gw, token, ("command", "refuser", "set_output", "output=fan", "on=true", "--url", gw.http_url,
                    "--data-dir", str(gw.data_dir)), env={}, ok=False))
    assert cmd["name"] == "set_output"
    line = one_line_error(proc, "refuser refused set_output", "no output 'fan'")
    assert proc.returncode == 2 and proc.stdout == "", line
    one_line_error(gateway_cli("command", "refuser", "ping", "--url", "ftp://127.0.0.1:1",
                               "--data-dir", str(gw.data_dir)), "ws://", "http://")


def test_a_command_to_a_device_that_never_connected_is_refused_at_once(gw: GatewayProcess) -> None:
    gw.register("never-here")
    proc = gateway_cli("command", "never-here", "ping", "--timeout", "300", "--data-dir", str(gw.data_dir))
    one_line_error(proc, "device_offline", "never connected")


def test_only_get_requests_are_answered(gw: GatewayProcess) -> None:
    for path in ("/v1/history?device=x&metric=temperature", "/v1/devices", "/healthz", "/metrics", "/",
                 "/v1/admin", "/v1/device"):
        request = urllib.request.Request(gw.http_url + path, method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET", path
        assert json.load(refused.value)["code"] == "method_not_allowed"


def test_check_config_warns_about_unknown_edgewire_variables(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text("port = 9000\n")
    proc = gateway_cli("check-config", "--config", str(config), env={"EDGEWIRE_PROT": "1"})
    assert proc.returncode == 0
    assert proc.stderr.startswith("warning: EDGEWIRE_PROT is not a gateway setting"), proc.stderr
    assert json.loads(proc.stdout)["port"] == 9000
