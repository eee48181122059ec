"""Consistent SQLite backups: ``edgewire-gateway backup --config F --to DIR --keep N``.

SQLite's online backup API copies a consistent snapshot while the gateway keeps writing
(WAL). The copy goes to ``DIR/edgewire-YYYYmmddTHHMMSSZ.db.partial``, is checked
(``PRAGMA quick_check``), fsynced and renamed into place, so a listed backup is always
complete; then only the newest ``keep`` backups are kept. The token key (device tokens
are HMACs under it: a database restored without it accepts no token) is copied beside
them as ``token.key`` whenever it differs. Files are mode 0600, the directory 0700.
A PostgreSQL storage URL is refused: back that database up with pg_dump.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.errors import ConfigError, StorageError

PREFIX = "edgewire-"
SUFFIX = ".db"
KEY_NAME = "token.key"


@dataclass(slots=True)
class BackupResult:
    path: Path
    size: int
    removed: list[Path] = field(default_factory=list)
    key_copied: bool = False


def database_to_back_up(config: GatewayConfig) -> Path:
    """The SQLite file of ``config``; ConfigError for a storage that is not a local SQLite file."""
    if config.storage.startswith(("postgresql://", "postgres://")):
        raise ConfigError("storage is PostgreSQL: this command backs up SQLite only; back the database up "
                          "with pg_dump (docs/deploy.md, Backup and restore)")
    if config.storage not in ("sqlite", "none"):
        raise ConfigError(f"storage: {config.storage!r} is not a SQLite storage; nothing to back up here")
    return config.database


def backups(directory: Path) -> list[Path]:
    """Finished backups in ``directory``, oldest first."""
    return sorted(p for p in directory.glob(f"{PREFIX}*{SUFFIX}") if p.is_file())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_key(key: Path, directory: Path) -> bool:
    """Copy the token key beside the backups unless an identical copy is there; True if copied."""
    data = key.read_bytes()
    target = directory / KEY_NAME
    with contextlib.suppress(OSError):
        if target.read_bytes() == data:
            return False
    tmp = directory / f".{KEY_NAME}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    return True


def backup_sqlite(database: Path, directory: Path, keep: int, key: Path | None = None,
                  clock: Callable[[], float] = time.time) -> BackupResult:
    """Copy ``database`` to a dated file in ``directory``; keep the newest ``keep`` backups."""
    if keep < 1:
        raise ConfigError("--keep: must be at least 1")
    if not database.is_file():
        raise StorageError(f"no database at {database}; check --config/--data-dir (the gateway creates it "
                           "on its first start)")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create backup directory {directory} ({err.strerror})") from None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    target = directory / f"{PREFIX}{stamp}{SUFFIX}"
    n = 1
    while target.exists():
        n += 1
        target = directory / f"{PREFIX}{stamp}-{n}{SUFFIX}"
    partial = target.with_name(target.name + ".partial")
    old_umask = os.umask(0o077)
    try:
        source = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE")  # a self-contained file, no -wal beside it
                verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                copy.close()
        finally:
            source.close()
        if verdict != "ok":
            raise StorageError(f"backup of {database} failed its integrity check ({verdict}); the database "
                               "may be damaged: keep the older backups")
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
        _fsync_dir(directory)
        key_copied = _copy_key(key, directory) if key is not None and key.is_file() else False
    except sqlite3.Error as err:
        raise StorageError(f"backup of {database} failed: {err}") from None
    except OSError as err:
        raise StorageError(f"backup to {directory} failed: {err.strerror or err} (disk full? writable?)") from None
    finally:
        os.umask(old_umask)
        with contextlib.suppress(OSError):
            partial.unlink()
    result = BackupResult(target, target.stat().st_size, key_copied=key_copied)
    for old in backups(directory)[:-keep]:
        old.unlink()
        result.removed.append(old)
    return result
