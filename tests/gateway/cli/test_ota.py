"""``python -m gateway ota upload|pubkey|list|show|delete`` on storage directly, in real subprocesses:
what a release holds (.py compiled to .mpy, never a root file of the board), its signature, the key file,
and every failure as one ``error:`` line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.ota.manifest import KEY_FILE, parse_manifest, public_key_hex, verify


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWIRE_")}
    return subprocess.run([sys.executable, "-m", "gateway", "ota", *args], capture_output=True, text=True,
                          timeout=120, env=clean)


def one_error(done: subprocess.CompletedProcess[str], text: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], done.stderr


def app(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "app.py").write_text("def run():\n    return 42\n")
    (folder / "lib.mpy").write_bytes(b"M\x06\x00\x1f" + bytes(100))
    (folder / "settings.json").write_text("{}")
    return folder


def test_upload_compiles_signs_and_stores(tmp_path: Path) -> None:
    data = str(tmp_path / "gw")
    done = cli("upload", "--kind", "esp32", "--version", "1.0.0", str(app(tmp_path)), "--data-dir", data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "esp32-1.0.0\n"
    key_file = tmp_path / "gw" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    pub = cli("pubkey", "--data-dir", data).stdout.strip()
    assert pub == public_key_hex(key) and len(pub) == 130 and pub.startswith("04")
    shown = json.loads(cli("show", "esp32-1.0.0", "--data-dir", data).stdout)
    assert [f["name"] for f in shown["files"]] == ["app.mpy", "lib.mpy", "settings.json"]
    manifest = parse_manifest(shown["manifest"])
    assert manifest.min_runtime == "1.22.0" and manifest.kind == "esp32"
    assert verify(pub, shown["manifest"], shown["sig"])
    assert not verify(pub, shown["manifest"].replace("1.22.0", "1.0.0"), shown["sig"])
    listed = json.loads(cli("list", "--json", "--data-dir", data).stdout)
    assert [r["release"] for r in listed] == ["esp32-1.0.0"]
    done = cli("delete", "esp32-1.0.0", "--data-dir", data)
    assert done.returncode == 0, done.stderr
    assert json.loads(cli("list", "--json", "--data-dir", data).stdout) == []


def test_upload_with_an_operators_key_and_a_wheel(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp_path / "release.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    wheel = tmp_path / "edgewire-2.0.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x03\x04" + bytes(1000))
    data = str(tmp_path / "gw")
    done = cli("upload", "--kind", "pi", "--version", "2.0.0", str(wheel), "--key", str(key_path), "--data-dir", data)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "gw" / KEY_FILE).exists()  # the operator's key, not a new one
    shown = json.loads(cli("show", "pi-2.0.0", "--data-dir", data).stdout)
    assert verify(public_key_hex(key), shown["manifest"], shown["sig"])
    assert parse_manifest(shown["manifest"]).min_runtime == "3.11"


def test_failures_are_one_error_line_and_store_nothing(tmp_path: Path) -> None:
    data = str(tmp_path / "gw")
    folder = app(tmp_path)
    (folder / "broken.py").write_text("def f(:\n")
    one_error(cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--data-dir", data),
              "could not compile broken.py")
    (folder / "broken.py").unlink()
    (folder / "sub").mkdir()
    one_error(cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--data-dir", data), "flat")
    (folder / "sub").rmdir()
    (folder / "bad name.py").write_text("x = 1\n")
    one_error(cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--data-dir", data), "file name")
    (folder / "bad name.py").unlink()
    one_error(cli("upload", "--kind", "pi", "--version", "1.0.0", str(folder), "--data-dir", data), "wheel")
    for root in ("boot.py", "main.py", "slots.mpy", "config.json"):  # never updated over the air
        (folder / root).write_text("x = 1\n")
        one_error(cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--data-dir", data),
                  f"{root}: boot.py, main.py, slots and config.json are never updated over the air")
        (folder / root).unlink()
    (folder / "app.mpy").write_bytes(b"M\x06")
    one_error(cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--data-dir", data), "given twice")
    (folder / "app.mpy").unlink()
    (folder / "app.py").rename(folder / "other.py")
    one_error(cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--data-dir", data),
              "no app.mpy (or app.py)")
    (folder / "other.py").rename(folder / "app.py")
    one_error(cli("upload", "--kind", "esp32", "--version", "1/0", str(folder), "--data-dir", data), "version")
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    not_a_key.chmod(0o600)
    one_error(cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--key", str(not_a_key),
                  "--data-dir", data), "not an unencrypted PEM private key")
    one_error(cli("show", "esp32-1.0.0", "--data-dir", data), "no database")
    assert not (tmp_path / "gw").exists()  # no key, no database made by the failures
    assert cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--data-dir", data).returncode == 0
    one_error(cli("upload", "--kind", "esp32", "--version", "1.0.0", str(folder), "--data-dir", data), "exists")
    one_error(cli("show", "esp32-9", "--data-dir", data), "does not exist")
    one_error(cli("show", "x86-1", "--data-dir", data), "release:")
    one_error(cli("list", "--data-dir", str(tmp_path / "none"), "--storage", "none"), "storage = none")
