"""Private state: the one reader and writer of secret files (token key, admin and dashboard
tokens, JWT keys) and the data directory.

Secrets are files of mode 0600. Reading one that others can read logs a warning; an
unreadable, empty or non-UTF-8 file is a ConfigError naming the setting to check. The data
directory is 0700, and the gateway's processes run with umask 077 (``private_umask``), so the
database and its -wal/-shm files are 0600 too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

from gateway.errors import ConfigError
from gateway.logs import log

PRIVATE_UMASK = 0o077


def private_umask() -> None:
    """Files and directories this process creates are readable by its user only."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) mode 0700; tighten an existing one of ours that others can read."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and info.st_uid == os.getuid():
            os.chmod(path, 0o700)
            log("data_dir_permissions", logging.WARNING, path=str(path), was=oct(stat.S_IMODE(info.st_mode)),
                now="0o700", hint="it holds the database and secrets")
    except OSError as err:
        raise ConfigError(f"data_dir: cannot create {path} ({err.strerror}); check the path and its owner") from None
    return path


def read_secret_bytes(path: str | Path, what: str) -> bytes:
    """The bytes of the secret file ``path``; ``what`` names it in errors (a setting or a file)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read()
    except OSError as err:
        raise ConfigError(f"{what}: cannot read {path} ({err.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log("secret_file_permissions", logging.WARNING, path=str(path), mode=oct(stat.S_IMODE(mode)),
            hint="chmod 600 it: other users can read it")
    return data


def read_secret(path: str | Path, what: str) -> str:
    """A text secret (surrounding whitespace stripped); ConfigError if unreadable, not UTF-8 or empty."""
    try:
        text = read_secret_bytes(path, what).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text


def write_secret_file(path: Path, data: bytes) -> bool:
    """Create ``path`` (mode 0600) holding ``data`` unless it exists; True if we created it.

    Written to a temporary file, fsynced, then hard-linked into place, so a reader
    never sees a partial file and two processes starting at once agree on one secret.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # filesystem without hard links: exclusive create instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the new directory entry durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return True
