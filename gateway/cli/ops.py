"""Operations commands, used by hand and by the Ansible roles (docs/deploy.md).

- ``backup --config F --to DIR --keep N``: a consistent SQLite backup to a dated file (gateway.backup).
- ``init --config F``: create the data directory's secrets (token key, admin token, and the
  dashboard token when the dashboard asks for one) if missing; never overwrites. Prints one
  ``created PATH`` line per file it created.
- ``check-config --config F``: validate a config file and print the effective settings as JSON.
- ``register DEVICE_ID [--url URL]``: make sure a device is registered, through the admin API
  of a running gateway, and print ``{"device_id", "action", "token"}`` as one JSON line. A new
  device is registered; an existing one keeps its token (action ``unchanged``) unless
  ``--rotate``, or unless ``--missing-token`` says its holder lost it, which rotates it.

Errors print ``error: ...`` (one line) on stderr and exit with status 2 (gateway/cli/main.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from gateway import registry as registry_mod
from gateway.cli.admin_client import admin_call, admin_token, client_ssl, gateway_address
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.storage.backends import cli_config

COMMANDS = ("backup", "init", "check-config", "register")


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the gateway's TOML config (e.g. /etc/edgewire/gateway.toml)")
    parser.add_argument("--data-dir", dest="data_dir", help="state directory (default: the config's data_dir)")


def add_ops_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("backup", help="copy the SQLite database to a dated file, keeping the newest N")
    _config_options(p)
    p.add_argument("--db", dest="db_path", help="SQLite file (default <data-dir>/edgewire.db)")
    p.add_argument("--to", dest="to", required=True, help="backup directory (created mode 0700)")
    p.add_argument("--keep", type=int, default=7, help="backups kept, newest first (default 7)")

    p = subparsers.add_parser("init", help="create the token key and admin token if missing (never overwrites)")
    _config_options(p)

    p = subparsers.add_parser("check-config", help="validate a config file and print the effective settings")
    p.add_argument("--config", required=True, help="the TOML file to check")

    p = subparsers.add_parser("register", help="make sure a device is registered, through the admin API")
    p.add_argument("device_id")
    p.add_argument("--url", help="the gateway, e.g. ws://127.0.0.1:8080 or wss://gw.example:8443 (http(s):// "
                   "works too; default: as for command, the address the running gateway left in --data-dir)")
    _config_options(p)
    p.add_argument("--admin-token-file", dest="admin_token_file",
                   help="file holding the admin token (default <data-dir>/admin.token)")
    p.add_argument("--cafile", help="CA or self-signed certificate to trust for a wss:// URL")
    p.add_argument("--label", default="", help="free text shown in listings (new devices)")
    p.add_argument("--missing-token", dest="missing_token", action="store_true",
                   help="the device has no token: rotate an existing registration to issue one")
    p.add_argument("--rotate", action="store_true", help="issue a new token even if the device has one")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for each admin request (default 30)")


def run_ops_command(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging

    setup_logging("warning", "text")  # e.g. a secret file readable by others
    if args.cmd == "backup":
        return _backup(args)
    if args.cmd == "init":
        return _init(args)
    if args.cmd == "check-config":
        config = load_config(args.config, warn=lambda message: print(f"warning: {message}", file=sys.stderr))
        settings = dataclasses.asdict(config)
        settings["webhooks"] = [hook.as_dict() for hook in config.webhooks]  # URLs may hold tokens: host only
        print(json.dumps(settings, indent=2, sort_keys=True))
        return 0
    return _register(args)


def _config(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config, overrides={"data_dir": args.data_dir})


def _backup(args: argparse.Namespace) -> int:
    from gateway.backup import backup_sqlite, database_to_back_up

    config = cli_config(args)  # the data directory's recorded storage: PostgreSQL is refused below
    database = database_to_back_up(config)
    result = backup_sqlite(database, Path(args.to), args.keep, key=Path(config.data_dir) / registry_mod.KEY_FILE)
    removed = f", removed {len(result.removed)} older" if result.removed else ""
    key = ", copied token.key beside it" if result.key_copied else ""
    print(f"backup {result.path} ({result.size / 1048576:.1f} MiB){removed}{key}")
    return 0


def _init(args: argparse.Namespace) -> int:
    config = _config(args)
    data_dir = Path(config.data_dir)
    secrets: list[tuple[str, Any]] = [
        (registry_mod.KEY_FILE, lambda: registry_mod.load_or_create_key(data_dir)),
        (registry_mod.ADMIN_TOKEN_FILE, lambda: registry_mod.load_or_create_admin_token(data_dir)),
    ]
    if config.dashboard_token_required:
        secrets.append(("dashboard.token", lambda: registry_mod.load_or_create_secret(
            data_dir, "dashboard.token", "ewd_", "dashboard token")))
    for name, create in secrets:
        path = data_dir / name
        existed = path.exists()
        create()  # validates an existing file too
        if not existed and path.exists():
            print(f"created {path}")
    return 0


def _register(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise ConfigError("--timeout: must be greater than 0 seconds")
    given: dict[str, str] = {}
    config = load_config(args.config, overrides={"data_dir": args.data_dir}, given=given)
    token = admin_token(config.data_dir, token_file=args.admin_token_file)
    url = gateway_address(args.url, config, given)
    context = client_ssl(args.cafile)

    async def call(request: dict[str, Any]) -> dict[str, Any]:
        return await admin_call(url, token, request, args.timeout, context)

    async def ensure() -> dict[str, Any]:
        known = {d["id"] for d in (await call({"t": "devices"}))["devices"]}
        if args.device_id not in known:
            reply = await call({"t": "register", "device_id": args.device_id, "label": args.label})
            return {"device_id": args.device_id, "action": "registered", "token": reply["token"]}
        if args.rotate or args.missing_token:
            reply = await call({"t": "rotate", "device_id": args.device_id})
            return {"device_id": args.device_id, "action": "rotated", "token": reply["token"]}
        return {"device_id": args.device_id, "action": "unchanged"}

    result = asyncio.run(ensure())
    if "token" in result:
        print(f"{result['action']} device {args.device_id}: its token is in the JSON below, shown only now",
              file=sys.stderr)
    print(json.dumps(result), flush=True)
    return 0
