"""What a gateway leaves in its data directory for the CLIs (docs/configuration.md, "The data directory").

- ``<data_dir>/storage``: the storage the directory belongs to, one line: ``sqlite``, or the
  ``postgresql://`` URL without any password (the CLIs then take the password from
  ``PGPASSWORD`` or ``~/.pgpass``, as the gateway does). Written at every start and kept; a CLI
  given no storage uses it, and one told another storage stops with one error line.
- ``<data_dir>/gateway.addr``: where the running gateway listens, one JSON object
  ``{"url", "host", "port", "scheme", "pid"}``. Written once it serves, removed by a clean
  stop. A CLI given no ``--url`` and no host or port uses it; a file whose pid is gone (a crash,
  a kill) is ignored with a note.

Both files are written whole (a temporary file renamed into place), mode 0600. Only one place
writes each (``record_storage``, ``write_address``/``remove_address``), so a supervising parent
process can call them as the gateway does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.logs import log
from gateway.storage.dsn import is_postgres_url

STORAGE_FILE = "storage"
ADDRESS_FILE = "gateway.addr"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def without_password(storage: str) -> str:
    """The storage setting as it may be written down: a PostgreSQL URL loses its password (in the
    user part and in a ``password=`` query parameter); ``none`` keeps its SQLite file, so it is
    ``sqlite``."""
    if storage == "none":
        return "sqlite"
    if not is_postgres_url(storage):
        return storage
    parts = urllib.parse.urlsplit(storage)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}@{hostport}"
    query = "&".join(item for item in parts.query.split("&")
                     if item and not item.lower().startswith("password="))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def record_storage(data_dir: str | Path, storage: str) -> None:
    """Write down which storage ``data_dir`` belongs to (never a password)."""
    _write(Path(data_dir) / STORAGE_FILE, without_password(storage) + "\n")


def recorded_storage(data_dir: str | Path) -> str | None:
    """The storage ``data_dir`` belongs to, or None if no gateway has started there yet."""
    try:
        text = (Path(data_dir) / STORAGE_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def same_storage(a: str, b: str) -> bool:
    """Whether two storage settings name the same backend (passwords aside; ``none`` is SQLite)."""
    return without_password(a) == without_password(b)


def gateway_url(host: str, port: int, tls: bool) -> str:
    """The URL the CLIs reach a gateway listening on ``host``:``port`` at (a wildcard address on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if tls else 'ws'}://{host}:{port}"


def write_address(data_dir: str | Path, host: str, port: int, tls: bool, pid: int | None = None) -> None:
    """Leave the running gateway's address in ``data_dir`` for the CLIs."""
    url = gateway_url(host, port, tls)
    _write(Path(data_dir) / ADDRESS_FILE, json.dumps({
        "url": url, "host": host, "port": port, "scheme": "wss" if tls else "ws",
        "pid": os.getpid() if pid is None else pid}) + "\n")


def remove_address(data_dir: str | Path, pid: int | None = None) -> None:
    """Remove the address file if it is this process's (``pid``): a newer gateway's stays."""
    path = Path(data_dir) / ADDRESS_FILE
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") != (os.getpid() if pid is None else pid):
            return
        path.unlink()
    except (OSError, ValueError, AttributeError):
        return


@dataclass(frozen=True, slots=True)
class Address:
    url: str | None  # None: no usable file
    note: str = ""  # why a file that is there was not used


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def running_address(data_dir: str | Path) -> Address:
    """The URL a running gateway left in ``data_dir``; none (with a note if a stale file is there)."""
    path = Path(data_dir) / ADDRESS_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Address(None)
    except (OSError, ValueError) as err:
        return Address(None, f"ignoring {path}: cannot read it ({getattr(err, 'strerror', None) or err})")
    if not isinstance(state, dict):
        state = {}
    url, pid = state.get("url"), state.get("pid")
    if not isinstance(url, str) or type(pid) is not int or pid <= 0:
        return Address(None, f"ignoring {path}: not a gateway address file")
    if not _running(pid):
        return Address(None, f"ignoring {path}: the gateway that wrote it (pid {pid}) is not running")
    return Address(url)


def gateway_started(config: GatewayConfig, port: int) -> None:
    """The gateway serves on ``port``: record its storage and leave its address (a failure is a warning)."""
    try:
        before = recorded_storage(config.data_dir)
        if before is not None and not same_storage(before, config.storage):
            log("data_dir_storage_changed", logging.WARNING, data_dir=str(config.data_dir), was=before,
                now=without_password(config.storage), hint="the commands given this --data-dir now use the new storage")
        record_storage(config.data_dir, config.storage)
        write_address(config.data_dir, config.host, port, bool(config.tls_cert))
    except OSError as err:
        log("state_files_not_written", logging.WARNING, data_dir=str(config.data_dir), error=err.strerror or str(err),
            hint="the CLIs will not find this gateway's storage or address by its data directory")


def gateway_stopped(config: GatewayConfig) -> None:
    """The gateway stopped serving: its address file goes."""
    remove_address(config.data_dir)
