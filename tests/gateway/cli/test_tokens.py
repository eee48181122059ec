"""``python -m gateway tokens url`` and ``tokens add --url``: the dashboard's address holding a token,
printed on stdout only (a terminal), in real subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from gateway.secret_files import write_secret_file

FILE_TOKEN = "ewd_" + "A1b2-C3d4_" * 4


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWIRE_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, **env})


def data_dir_with_token(tmp_path: Path) -> Path:
    data_dir = tmp_path / "gw"
    data_dir.mkdir(mode=0o700)
    write_secret_file(data_dir / "dashboard.token", (FILE_TOKEN + "\n").encode())
    return data_dir


def test_url_prints_the_dashboard_address_holding_the_file_token(tmp_path: Path) -> None:
    data_dir = data_dir_with_token(tmp_path)
    done = cli("tokens", "url", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"http://127.0.0.1:8080/#token={FILE_TOKEN}\n"
    # the configuration's port (here from the environment), or the address a browser uses
    done = cli("tokens", "url", "--data-dir", str(data_dir), EDGEWIRE_PORT="18080")
    assert done.stdout == f"http://127.0.0.1:18080/#token={FILE_TOKEN}\n"
    done = cli("tokens", "url", "--data-dir", str(data_dir), "--base-url", "https://gw.farm.lan/")
    assert done.stdout == f"https://gw.farm.lan/#token={FILE_TOKEN}\n"


def test_url_without_a_token_file_or_with_a_bad_base_is_one_error_line(tmp_path: Path) -> None:
    done = cli("tokens", "url", "--data-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and done.stdout == ""
    assert re.fullmatch(r"error: no .*dashboard\.token: the gateway creates it at its first start.*\n", done.stderr)
    data_dir = data_dir_with_token(tmp_path)
    for bad in ("ftp://gw.lan", "http://", "https://gw.lan/#x", "gw.lan:8080"):
        done = cli("tokens", "url", "--data-dir", str(data_dir), "--base-url", bad)
        assert done.returncode == 2 and done.stdout == "", bad
        assert done.stderr.startswith("error: --base-url: ") and done.stderr.count("\n") == 1, done.stderr


def test_add_with_url_prints_a_fresh_address_as_the_last_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    done = cli("tokens", "add", "alice", "--role", "operator", "--url", "--data-dir", str(data_dir),
               EDGEWIRE_PORT="9090")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"http://127\.0\.0\.1:9090/#token=ewd_[A-Za-z0-9_-]{32}\n", done.stdout), done.stdout
    assert "address holding it is below" in done.stderr and "ewd_" not in done.stderr
    listed = cli("tokens", "list", "--data-dir", str(data_dir))
    assert re.search(r"^alice\s+operator\s", listed.stdout, re.M), listed.stdout
    # a bad base is refused before anything is created
    done = cli("tokens", "add", "bob", "--role", "viewer", "--base-url", "ftp://x", "--data-dir", str(data_dir))
    assert done.returncode == 2 and done.stdout == ""
    assert "bob" not in cli("tokens", "list", "--data-dir", str(data_dir)).stdout
