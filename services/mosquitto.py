"""A throwaway Mosquitto 2.0 broker on free loopback ports, its files in a temporary directory.

    with MosquittoServer() as broker:
        url = broker.url                  # mqtt://127.0.0.1:PORT (anonymous)
        broker.stop(); broker.start()     # same ports; retained messages and sessions survive
                                          # only with persistence=True and a clean stop ("term")

Options: ``users={"name": "password"}`` (a password file made with mosquitto_passwd; anonymous
clients refused), ``acl`` (the text of an ACL file), ``tls=TlsFiles(...)`` (an extra TLS
listener, ``tls_url`` = mqtts://; ``make_test_certificates`` writes a CA and a certificate for
127.0.0.1/localhost), ``websockets=True`` (an extra listener, ``ws_url`` = ws://.../mqtt; it
ignores the bind address and listens on all interfaces, so it gets a free, unusual port and
the broker must be stopped after use), ``persistence=True`` (sessions, queued QoS 1 messages
and retained messages are saved at a clean stop), ``quiet=True`` (errors and warnings only;
for load runs). The broker starts with RLIMIT_NOFILE raised to the hard limit: Mosquitto
does not raise its own, and would stop accepting near 1,000 clients.

Facts about Debian's mosquitto 2.0.11 this relies on: a ``listener PORT ADDRESS`` line per
listener; started as root it drops to user ``mosquitto`` before opening the password file,
so the config names the current user (``user``), which keeps the privileges it has; a
websockets listener alone is refused ("Unable to start any listening sockets"), which the
plain TCP listener, always present, avoids.

``python -m services.mosquitto`` runs one until Ctrl-C and prints its URL.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.daemon import Daemon, run_until_signal
from services.errors import NotInstalledError, ServiceError
from services.process import free_port

INSTALL_HINT = "install Mosquitto: apt-get install -y mosquitto"
# A CONNECT (MQTT 3.1.1, clean session, empty client id): any CONNACK, even "not authorized", means ready.
_PROBE = bytes([0x10, 0x0C, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x00])


def mosquitto_path() -> str | None:
    """The broker binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the CA clients trust, the broker's certificate chain and its private key."""

    ca: Path
    cert: Path
    key: Path


class MosquittoServer(Daemon):
    name = "mosquitto"
    binary = "mosquitto"
    install_hint = INSTALL_HINT
    raise_open_files = True

    def __init__(self, port: int | None = None, parent_dir: str | Path | None = None, binary: str | None = None,
                 *, users: dict[str, str] | None = None, acl: str | None = None, tls: TlsFiles | None = None,
                 websockets: bool = False, persistence: bool = False, quiet: bool = False,
                 max_queued_messages: int = 0, start_timeout_s: float = 30.0) -> None:
        super().__init__(port, parent_dir, binary or mosquitto_path() or "mosquitto", start_timeout_s)
        self.users = dict(users or {})
        self.acl = acl
        self.tls = tls
        self.websockets = websockets
        self.persistence = persistence
        self.quiet = quiet
        self.max_queued_messages = max_queued_messages  # per client session; 0 = no limit
        self.tls_port = 0
        self.ws_port = 0

    def prepare(self, base_dir: Path) -> None:
        # The extra listeners' ports are chosen once: a restart keeps every address.
        self.tls_port = free_port() if self.tls else 0
        self.ws_port = free_port() if self.websockets else 0
        lines = ["# written by services.mosquitto", f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                 "per_listener_settings false", f"allow_anonymous {'false' if self.users else 'true'}",
                 f"persistence {'true' if self.persistence else 'false'}", f"persistence_location {base_dir}/",
                 f"max_queued_messages {self.max_queued_messages}", "max_connections -1", "set_tcp_nodelay true",
                 f"connection_messages {'false' if self.quiet else 'true'}", "log_dest stderr",
                 "log_timestamp_format %Y-%m-%dT%H:%M:%S", "log_type error", "log_type warning"]
        if not self.quiet:
            lines += ["log_type notice", "log_type information"]
        if self.users:
            passwd = shutil.which("mosquitto_passwd")
            if passwd is None:
                raise NotInstalledError(f"mosquitto_passwd not found: {INSTALL_HINT}")
            path = base_dir / "passwd"
            for user, password in self.users.items():
                argv = [passwd, "-b", *([] if path.exists() else ["-c"]), str(path), user, password]
                done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
                if done.returncode != 0:
                    raise ServiceError(f"mosquitto_passwd failed for user {user!r}: {done.stderr.strip()}")
            lines.append(f"password_file {path}")
        if self.acl is not None:
            (base_dir / "acl").write_text(self.acl)
            lines.append(f"acl_file {base_dir / 'acl'}")
        (base_dir / "settings.conf").write_text("\n".join(lines) + "\n")
        # Listener options apply to the listener line above them, so each listener is a block.
        extra: list[str] = []
        if self.tls is not None:
            extra += [f"listener {self.tls_port} 127.0.0.1", f"cafile {self.tls.ca}", f"certfile {self.tls.cert}",
                      f"keyfile {self.tls.key}", "tls_version tlsv1.2"]
        if self.websockets:
            extra += [f"listener {self.ws_port}", "protocol websockets", "socket_domain ipv4"]
        (base_dir / "listeners.conf").write_text("\n".join(extra) + "\n")

    def argv(self, binary: str, base_dir: Path) -> list[str]:
        # The plain listener's port is chosen at start (Daemon), after prepare().
        conf = base_dir / "mosquitto.conf"
        conf.write_text((base_dir / "settings.conf").read_text() + f"listener {self.port} 127.0.0.1\n"
                        + (base_dir / "listeners.conf").read_text())
        return [binary, "-c", str(conf)]

    def ready(self) -> bool:
        return self._talk(_PROBE)[:1] == b"\x20"

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (the plain TCP listener)."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        """``mqtts://localhost:PORT`` (the TLS listener; its certificate names localhost and 127.0.0.1)."""
        if not self.tls_port:
            raise ServiceError("this broker has no TLS listener: pass tls=TlsFiles(...)")
        return f"mqtts://localhost:{self.tls_port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/mqtt`` (the websockets listener)."""
        if not self.ws_port:
            raise ServiceError("this broker has no websockets listener: pass websockets=True")
        return f"ws://127.0.0.1:{self.ws_port}/mqtt"


def make_test_certificates(directory: Path, days: int = 2) -> TlsFiles:
    """A throwaway CA and a broker certificate for localhost and 127.0.0.1 (PEM files in ``directory``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: x509.Name | None, key: ec.EllipticCurvePrivateKey,
              signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("Edgewire test CA", None, ca_key, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("localhost", ca_cert.subject, key, ca_key, False)
    files = TlsFiles(directory / "ca.pem", directory / "broker.pem", directory / "broker.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    old = os.umask(0o077)
    try:
        files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    finally:
        os.umask(old)
    return files


def main(argv: list[str] | None = None) -> int:
    return run_until_signal(MosquittoServer, argv, "Run a throwaway Mosquitto broker on loopback until Ctrl-C.")


if __name__ == "__main__":
    raise SystemExit(main())
