"""``python -m gateway backup|init|check-config|register``: real subprocesses, a real gateway for register."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.backup import backup_sqlite, backups, database_to_back_up
from gateway.config import GatewayConfig
from gateway.errors import ConfigError, GatewayError, StorageError
from tests.gateway.cli.test_devices import authenticate
from tests.helpers.gateway import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWIRE_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def make_db(data_dir: Path) -> Path:
    added = cli("devices", "add", "S-1", "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr
    return data_dir / "edgewire.db"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ backup
def test_backup_cli_makes_a_private_dated_copy_and_the_key_beside_it(tmp_path: Path) -> None:
    data = tmp_path / "state"
    make_db(data)
    out = tmp_path / "backups"
    proc = cli("backup", "--data-dir", str(data), "--to", str(out), "--keep", "3")
    assert proc.returncode == 0, proc.stderr
    (copy,) = backups(out)
    assert proc.stdout.startswith(f"backup {copy} (") and "copied token.key" in proc.stdout
    assert copy.name.startswith("edgewire-") and copy.name.endswith("Z.db")
    assert mode(out) == 0o700 and mode(copy) == 0o600 and mode(out / "token.key") == 0o600
    assert (out / "token.key").read_bytes() == (data / "token.key").read_bytes()
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("SELECT device_id FROM devices").fetchall() == [("S-1",)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()
    assert not list(out.glob("*.partial")) and not list(out.glob("*-wal"))
    again = cli("backup", "--data-dir", str(data), "--to", str(out))
    assert again.returncode == 0 and "token.key" not in again.stdout  # the same key is not rewritten
    assert len(backups(out)) == 2


def test_backup_keeps_the_newest_n(tmp_path: Path) -> None:
    db = make_db(tmp_path / "state")
    out = tmp_path / "b"
    now = [1_764_000_000.0]
    made = []
    for _ in range(5):
        made.append(backup_sqlite(db, out, keep=2, clock=lambda: now[0]))
        now[0] += 86400
    assert backups(out) == [made[3].path, made[4].path]
    assert made[4].removed == [made[2].path]
    same_second = backup_sqlite(db, out, keep=5, clock=lambda: now[0] - 86400)
    assert same_second.path.name.endswith("-2.db") and len(backups(out)) == 3


def test_backup_is_consistent_while_the_database_is_written(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    writer = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (batch INTEGER, n INTEGER)")
    stop = threading.Event()

    def write() -> None:
        batch = 0
        while not stop.is_set() and batch < 20000:  # bounded
            writer.execute("BEGIN")
            writer.executemany("INSERT INTO t VALUES (?, ?)", [(batch, i) for i in range(10)])
            writer.execute("COMMIT")
            batch += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        results = [backup_sqlite(db, tmp_path / "b", keep=10) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
        writer.close()
    for result in results:
        conn = sqlite3.connect(result.path)
        try:
            (count,) = conn.execute("SELECT count(*) FROM t").fetchone()
            assert count % 10 == 0  # whole transactions only
        finally:
            conn.close()


def test_backup_failures_are_one_line(tmp_path: Path) -> None:
    one_line_error(cli("backup", "--data-dir", str(tmp_path / "none"), "--to", str(tmp_path / "b")),
                   "no database at")
    make_db(tmp_path / "state")
    one_line_error(cli("backup", "--data-dir", str(tmp_path / "state"), "--to", str(tmp_path / "b"),
                       "--keep", "0"), "--keep")
    (tmp_path / "file").write_text("x")
    one_line_error(cli("backup", "--data-dir", str(tmp_path / "state"), "--to", str(tmp_path / "file" / "b")),
                   "backup directory")


def test_backup_refuses_postgresql_and_names_pg_dump(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pg_dump"):
        database_to_back_up(GatewayConfig(storage="postgresql://edgewire@127.0.0.1/edgewire"))
    assert database_to_back_up(GatewayConfig(data_dir=str(tmp_path))) == tmp_path / "edgewire.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path}"\nstorage = "postgresql://edgewire@127.0.0.1:5432/edgewire"\n')
    try:
        GatewayConfig(storage="postgresql://edgewire@127.0.0.1:5432/edgewire").validate()
    except ConfigError:
        pytest.skip("this gateway does not accept PostgreSQL storage URLs yet")
    one_line_error(cli("backup", "--config", str(config), "--to", str(tmp_path / "b")), "pg_dump")


def test_backup_of_a_damaged_file_fails_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "edgewire.db"
    db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StorageError, match="backup of"):
        backup_sqlite(db, tmp_path / "b", keep=1)
    assert backups(tmp_path / "b") == [] and not list((tmp_path / "b").iterdir())


# ------------------------------------------------------------------ init, check-config
def test_init_creates_the_secrets_once(tmp_path: Path) -> None:
    data = tmp_path / "state"
    first = cli("init", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"created {data / 'token.key'}", f"created {data / 'admin.token'}"]
    key, admin = (data / "token.key").read_bytes(), (data / "admin.token").read_text()
    assert len(key) == 32 and admin.startswith("ewa_") and mode(data / "token.key") == 0o600
    second = cli("init", "--data-dir", str(data))
    assert second.returncode == 0 and second.stdout == ""
    assert (data / "token.key").read_bytes() == key and (data / "admin.token").read_text() == admin
    config = tmp_path / "public.toml"
    config.write_text(f'host = "0.0.0.0"\ndata_dir = "{data}"\n')
    third = cli("init", "--config", str(config))
    assert third.stdout.splitlines() == [f"created {data / 'dashboard.token'}"]


def test_init_refuses_a_damaged_key(tmp_path: Path) -> None:
    (tmp_path / "token.key").write_bytes(b"short")
    (tmp_path / "token.key").chmod(0o600)
    one_line_error(cli("init", "--data-dir", str(tmp_path)), "token key", "restore it from a backup")


def test_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('port = 9001\nreadings_retention_days = 14\n[[alerts]]\nmetric = "humidity"\nabove = 90\n'
                    '[[webhooks]]\nname = "ops"\nurl = "https://hooks.example.com/T0KEN"\nsecret_env = "X"\n')
    proc = cli("check-config", "--config", str(good))
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)
    assert settings["port"] == 9001 and settings["readings_retention_days"] == 14
    assert settings["rollup_retention_days"] == 730 and settings["alerts"][0]["metric"] == "humidity"
    assert settings["webhooks"][0]["url"] == "https://hooks.example.com/..." and "T0KEN" not in proc.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[alerts]]\nmetric = "humidity"\nbelow = "low"\n')
    one_line_error(cli("check-config", "--config", str(bad)), "alerts: rule 1: below: must be a number")
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 70000\n")
    one_line_error(cli("check-config", "--config", str(bad)), "port")
    bad.write_text("colour = 'blue'\n")
    one_line_error(cli("check-config", "--config", str(bad)), "colour", "unknown setting")


# ------------------------------------------------------------------ register (admin API)
def register(gw: GatewayProcess, device_id: str, *extra: str) -> dict[str, str]:
    proc = cli("register", device_id, "--url", gw.url, "--data-dir", str(gw.data_dir), *extra)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    if "token" in result:
        assert "shown only now" in proc.stderr and result["token"] not in proc.stderr
    return result


def test_register_is_idempotent_and_rotates_on_request(gateway: GatewayProcess) -> None:
    first = register(gateway, "PI-1", "--label", "greenhouse")
    assert first["action"] == "registered" and first["token"].startswith("ewt_")
    assert authenticate(gateway.data_dir, "PI-1", first["token"]) == "PI-1"
    assert register(gateway, "PI-1") == {"device_id": "PI-1", "action": "unchanged"}
    assert authenticate(gateway.data_dir, "PI-1", first["token"]) == "PI-1"  # kept its token
    lost = register(gateway, "PI-1", "--missing-token")
    assert lost["action"] == "rotated"
    rotated = register(gateway, "PI-1", "--rotate")
    assert rotated["action"] == "rotated" and rotated["token"] not in (first["token"], lost["token"])
    assert authenticate(gateway.data_dir, "PI-1", lost["token"]) == "auth_failed"
    assert authenticate(gateway.data_dir, "PI-1", rotated["token"]) == "PI-1"


def test_register_with_a_token_file_elsewhere(gateway: GatewayProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "controller-copy"
    token_file.write_text(gateway.admin_token + "\n")
    proc = cli("register", "PI-2", "--url", gateway.url, "--admin-token-file", str(token_file))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["action"] == "registered"


def test_register_failures_are_one_line(gateway: GatewayProcess, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("ewa_not-the-admin-token-at-all\n")
    wrong.chmod(0o600)  # else a warning line about its mode comes first (under umask 022)
    one_line_error(cli("register", "PI-1", "--url", gateway.url, "--admin-token-file", str(wrong)),
                   "HTTP 401", "admin token was refused")
    one_line_error(cli("register", "PI-1", "--url", f"ws://127.0.0.1:{free_port()}", "--data-dir",
                       str(gateway.data_dir)), "cannot reach the admin API", "is the gateway running")
    one_line_error(cli("register", "bad id!", "--url", gateway.url, "--data-dir", str(gateway.data_dir)),
                   "bad_request")
    one_line_error(cli("register", "PI-1", "--url", "ftp://x", "--data-dir", str(gateway.data_dir)),
                   "not a gateway URL", "http://HOST:PORT")
    one_line_error(cli("register", "PI-1", "--url", gateway.url, "--data-dir", str(tmp_path / "elsewhere")),
                   "no admin token", "admin.token")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, as the Ansible role makes one."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "gw.crt", tmp_path / "gw.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_register_over_tls_trusts_the_given_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    gw = GatewayProcess(tmp_path, tls_cert=str(cert), tls_key=str(key))
    gw.proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(gw.config_path), "--port", str(gw.port),
         "--data-dir", str(gw.data_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert gw.proc.stdout is not None
        for line in gw.proc.stdout:  # wait for the log line (urllib would refuse the self-signed cert)
            if "listening on" in line:
                break
        else:
            raise AssertionError(f"gateway exited with {gw.proc.wait()}")
        url = f"wss://localhost:{gw.port}"
        one_line_error(cli("register", "PI-1", "--url", url, "--data-dir", str(gw.data_dir)),
                       "TLS", "--cafile")
        proc = cli("register", "PI-1", "--url", url, "--data-dir", str(gw.data_dir), "--cafile", str(cert))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["action"] == "registered"
        one_line_error(cli("register", "PI-1", "--url", url, "--data-dir", str(gw.data_dir), "--cafile",
                           str(tmp_path / "missing.pem")), "--cafile")
    finally:
        gw.stop()


def test_admin_token_helper(tmp_path: Path) -> None:
    from gateway.cli.admin_client import admin_token

    with pytest.raises(GatewayError, match="empty"):
        (tmp_path / "admin.token").write_text("\n")
        admin_token(str(tmp_path))
