"""The storage the configuration names (not yet opened), for the gateway and for every CLI command."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.secret_files import private_dir
from gateway.state_files import STORAGE_FILE, recorded_storage, same_storage
from gateway.storage.base import Storage


def open_storage(config: GatewayConfig, commit_interval_ms: float | None = None) -> Storage:
    """SQLite (in its private directory), PostgreSQL, or ``storage = "none"`` (readings not stored) over SQLite."""
    interval = config.commit_interval_ms if commit_interval_ms is None else commit_interval_ms
    if config.storage_kind == "postgresql":
        from gateway.storage.postgresql import PostgresStorage

        return PostgresStorage(config.storage, commit_interval_ms=interval)
    from gateway.storage.none import NoneStorage
    from gateway.storage.sqlite import SQLiteStorage

    private_dir(config.data_dir)
    private_dir(config.database.parent)
    sqlite = SQLiteStorage(config.database, commit_interval_ms=interval, synchronous=config.synchronous.upper())
    return NoneStorage(sqlite) if config.storage_kind == "none" else sqlite


def storage_arguments() -> argparse.ArgumentParser:
    """``--data-dir``, ``--db``, ``--config``, ``--storage``: where a CLI command finds the gateway's storage."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", dest="data_dir", default=None,
                        help="gateway state directory (default: the config's data_dir, var/gateway)")
    common.add_argument("--db", dest="db_path", default=None,
                        help="SQLite file (default <data-dir>/edgewire.db)")
    common.add_argument("--storage", dest="storage", default=None,
                        help="sqlite (default) or postgresql://USER@HOST:PORT/DB (also EDGEWIRE_STORAGE)")
    common.add_argument("--config", dest="config", default=None,
                        help="gateway TOML config to take these settings from")
    return common


def cli_config(args: argparse.Namespace) -> GatewayConfig:
    """The configuration a CLI command runs with: config file < EDGEWIRE_* < the options above.

    Given no storage, the command uses the one its data directory records (``<data_dir>/storage``,
    written by the gateway: gateway/state_files.py); given another, it stops with a ConfigError."""
    given: dict[str, str] = {}
    config = load_config(getattr(args, "config", None),
                         overrides={"data_dir": getattr(args, "data_dir", None),
                                    "db_path": getattr(args, "db_path", None),
                                    "storage": getattr(args, "storage", None)},
                         warn=lambda message: print(f"warning: {message}", file=sys.stderr), given=given)
    return with_recorded_storage(config, given.get("storage"), getattr(args, "config", None))


def with_recorded_storage(config: GatewayConfig, source: str | None, config_file: str | None = None) -> GatewayConfig:
    """``config`` with the storage its data directory records when ``source`` (where the storage
    setting came from: ``file``, ``env``, ``flag``, or None) is None; ConfigError when the
    setting names another storage than the one recorded."""
    recorded = recorded_storage(config.data_dir)
    if recorded is None:
        return config
    if source is None:
        try:
            return dataclasses.replace(config, storage=recorded).validate()
        except ConfigError as err:
            raise ConfigError(f"{Path(config.data_dir) / STORAGE_FILE}: {err}") from None
    if same_storage(config.storage, recorded):
        return config
    where = {"flag": "--storage", "env": "EDGEWIRE_STORAGE"}.get(source, f"storage in {config_file}")
    raise ConfigError(f"{where} names {config.storage_display} but {config.data_dir} belongs to {recorded} "
                      f"(its gateway's storage, recorded in {Path(config.data_dir) / STORAGE_FILE}): drop {where}, "
                      "or pass the data directory of that storage's gateway with --data-dir")
