"""``python -m gateway devices ...`` and ``jwt`` in real subprocesses; tokens checked by Authenticator."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.auth import Authenticator
from gateway.errors import AuthError
from gateway.registry import load_or_create_key
from gateway.storage.sqlite import SQLiteStorage
from protocol import wire

TOKEN_RE = re.compile(r"ewt_[A-Za-z0-9_-]{32}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWIRE_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def authenticate(data_dir: Path, device_id: str | None = None, token: str | None = None,
                 jwt: str | None = None, secret: str | None = None) -> Any:
    """Authenticate as the gateway would: its key file, its database. Returns the id or the error code."""

    async def main() -> Any:
        storage = SQLiteStorage(data_dir / "edgewire.db")
        await storage.open()
        try:
            auth = Authenticator(storage, load_or_create_key(data_dir), jwt_secret=secret)
            try:
                ident = await auth.authenticate(device_id=device_id, token=token, jwt=jwt,
                                                address="127.0.0.1")
            except AuthError as err:
                return err.code
            return ident.device_id
        finally:
            await storage.close()

    return asyncio.run(main())


def test_devices_lifecycle(tmp_path: Path) -> None:
    d = str(tmp_path / "state")
    added = cli("devices", "add", "S-1", "--label", "bench", "--data-dir", d)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert TOKEN_RE.fullmatch(token)
    assert "shown only now" in added.stderr and token not in added.stderr
    assert authenticate(tmp_path / "state", "S-1", token) == "S-1"

    dup = cli("devices", "add", "S-1", "--data-dir", d)
    assert dup.returncode == 2 and "already registered" in dup.stderr and dup.stdout == ""
    bad = cli("devices", "add", "bad id", "--data-dir", d)
    assert bad.returncode == 2 and "invalid device id" in bad.stderr

    assert cli("devices", "add", "S-2", "--cidr", "10.0.0.0/8", "--data-dir", d).returncode == 0
    table = cli("devices", "list", "--data-dir", d)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["DEVICE", "ENABLED", "TOKEN", "ALLOW", "CREATED", "LABELS", "LABEL"]
    assert lines[1].split()[:4] == ["S-1", "yes", "active", "any"] and lines[1].endswith("bench")
    assert lines[2].split()[:4] == ["S-2", "yes", "active", "10.0.0.0/8"]
    assert "ewt_" not in table.stdout

    assert cli("devices", "disable", "S-1", "--data-dir", d).returncode == 0
    assert authenticate(tmp_path / "state", "S-1", token) == wire.E_DISABLED
    listed = json.loads(cli("devices", "list", "--json", "--data-dir", d).stdout)
    assert [(x["device_id"], x["enabled"]) for x in listed] == [("S-1", False), ("S-2", True)]
    assert cli("devices", "enable", "S-1", "--data-dir", d).returncode == 0
    assert authenticate(tmp_path / "state", "S-1", token) == "S-1"

    rotated = cli("devices", "rotate", "S-1", "--data-dir", d)
    assert rotated.returncode == 0
    new = rotated.stdout.strip().splitlines()[-1]
    assert TOKEN_RE.fullmatch(new) and new != token
    assert authenticate(tmp_path / "state", "S-1", token) == wire.E_AUTH_FAILED
    assert authenticate(tmp_path / "state", "S-1", new) == "S-1"

    assert cli("devices", "revoke", "S-1", "--data-dir", d).returncode == 0
    assert authenticate(tmp_path / "state", "S-1", new) == wire.E_AUTH_FAILED
    shown = json.loads(cli("devices", "show", "S-1", "--data-dir", d).stdout)
    assert shown["token"] == "revoked" and "digest" not in json.dumps(shown)

    for action in ("disable", "enable", "rotate", "revoke", "show", "delete"):
        missing = cli("devices", action, "S-9", "--data-dir", d)
        assert missing.returncode == 2 and "unknown device 'S-9'" in missing.stderr

    deleted = cli("devices", "delete", "S-2", "--data-dir", d)
    assert deleted.returncode == 0 and "removed from the registry" in deleted.stderr
    assert "kept until retention" in deleted.stderr
    assert [x["device_id"] for x in json.loads(cli("devices", "list", "--json", "--data-dir", d).stdout)] == ["S-1"]
    assert cli("devices", "delete", "S-2", "--data-dir", d).returncode == 2


def test_labels_are_set_shown_dropped_and_refused_when_bad(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert cli("devices", "add", "S-1", "--data-dir", d).returncode == 0
    assert cli("devices", "label", "S-1", "--data-dir", d).stdout.strip() == "no labels"
    set_ = cli("devices", "label", "S-1", "site=greenhouse", "outdoor", "--data-dir", d)
    assert set_.returncode == 0 and set_.stdout.strip() == "outdoor,site=greenhouse", set_.stderr
    shown = json.loads(cli("devices", "show", "S-1", "--data-dir", d).stdout)
    assert shown["labels"] == {"outdoor": "", "site": "greenhouse"}
    table = cli("devices", "list", "--data-dir", d).stdout.splitlines()
    assert table[1].split()[5] == "outdoor,site=greenhouse"
    # bad input: one error line, nothing changed (the good label before the bad one is not set either)
    for bad in ("floor=1 bad key", "_x", "x=y=z", "k=has space", "k=" + "v" * 65):
        result = cli("devices", "label", "S-1", "floor=1", bad, "--data-dir", d)
        assert result.returncode == 2 and result.stderr.startswith("error: label") and result.stdout == "", bad
        assert len(result.stderr.strip().splitlines()) == 1
    assert cli("devices", "label", "S-1", "--data-dir", d).stdout.strip() == "outdoor,site=greenhouse"
    many = cli("devices", "label", "S-1", *[f"k{i}" for i in range(20)], "--data-dir", d)
    assert many.returncode == 2 and "at most 16" in many.stderr
    dropped = cli("devices", "label", "S-1", "outdoor-", "site=lab", "--data-dir", d)
    assert dropped.returncode == 0 and dropped.stdout.strip() == "site=lab"
    missing = cli("devices", "label", "S-9", "a=b", "--data-dir", d)
    assert missing.returncode == 2 and "unknown device 'S-9'" in missing.stderr


def test_allow_command(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert cli("devices", "add", "S-1", "--data-dir", d).returncode == 0
    assert cli("devices", "allow", "S-1", "--data-dir", d).stdout.strip() == "any"
    set_ = cli("devices", "allow", "S-1", "--cidr", "192.168.1.7", "--cidr", "10.1.0.0/16", "--data-dir", d)
    assert set_.returncode == 0 and set_.stdout.strip() == "192.168.1.7/32 10.1.0.0/16"
    bad = cli("devices", "allow", "S-1", "--cidr", "10.0.0.0/40", "--data-dir", d)
    assert bad.returncode == 2 and "not an IP address or CIDR" in bad.stderr
    assert cli("devices", "allow", "S-1", "--data-dir", d).stdout.strip() == "192.168.1.7/32 10.1.0.0/16"
    assert cli("devices", "allow", "S-1", "--any", "--data-dir", d).stdout.strip() == "any"


def test_commands_other_than_add_need_an_existing_database(tmp_path: Path) -> None:
    result = cli("devices", "list", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no database" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_cli_works_while_the_gateway_holds_the_database(tmp_path: Path) -> None:
    async def main() -> tuple[str, Any]:
        storage = SQLiteStorage(tmp_path / "edgewire.db")  # the running gateway's storage
        await storage.open()
        try:
            added = await asyncio.to_thread(cli, "devices", "add", "LIVE-1", "--data-dir", str(tmp_path))
            assert added.returncode == 0, added.stderr
            token = added.stdout.strip().splitlines()[-1]
            auth = Authenticator(storage, load_or_create_key(tmp_path))
            ident = await auth.authenticate(device_id="LIVE-1", token=token, jwt=None, address="127.0.0.1")
            disabled = await asyncio.to_thread(cli, "devices", "disable", "LIVE-1", "--data-dir",
                                               str(tmp_path))
            assert disabled.returncode == 0, disabled.stderr
            try:
                await auth.authenticate(device_id="LIVE-1", token=token, jwt=None, address="127.0.0.1")
            except AuthError as err:
                return ident.device_id, err.code
            return ident.device_id, None
        finally:
            await storage.close()

    assert asyncio.run(main()) == ("LIVE-1", wire.E_DISABLED)


def test_jwt_command(tmp_path: Path) -> None:
    secret = "q" * 48
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_text(secret + "\n")
    assert cli("devices", "add", "S-1", "--data-dir", str(tmp_path)).returncode == 0
    minted = cli("jwt", "S-1", "--secret-file", str(secret_file), "--ttl", "120", "--data-dir", str(tmp_path))
    assert minted.returncode == 0, minted.stderr
    jwt = minted.stdout.strip()
    assert authenticate(tmp_path, jwt=jwt, secret=secret) == "S-1"
    assert authenticate(tmp_path, jwt=jwt, secret="r" * 48) == wire.E_AUTH_FAILED
    short = tmp_path / "short.secret"
    short.write_text("abc")
    result = cli("jwt", "S-1", "--secret-file", str(short))
    assert result.returncode == 2 and "at least 32 bytes" in result.stderr


def test_standalone_entry_point(tmp_path: Path) -> None:
    assert cli("devices", "add", "S-1", "--data-dir", str(tmp_path)).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWIRE_")}
    result = subprocess.run([sys.executable, "-m", "gateway.cli.devices", "devices", "list", "--data-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and "S-1" in result.stdout
