"""``python -m gateway devices add|list|show|disable|enable|rotate|revoke|allow|label|remove`` and ``jwt``.

Works on the gateway's storage directly, also while the gateway runs (SQLite WAL, or the
PostgreSQL database named by ``--storage``/``EDGEWIRE_STORAGE``/the config; the gateway reads
the registry on every authentication, so changes apply to the next connection). ``remove``
(alias ``delete``) goes through the running gateway's admin API when there is one (found by its
data directory, or ``--url``), so its session ends and its MQTT bridge clears the device's Home
Assistant discovery at once; with none running it removes the registry row directly. ``add`` and
``rotate`` print the token as the last stdout line; it is shown only then. Errors print
``error: ...`` on stderr and exit with status 2.

Wiring (gateway/cli/main.py): ``add_device_commands(subparsers)``, then for a parsed
``args`` whose ``devices_command`` attribute is set, ``return run_devices_command(args)``.
Standalone: ``python -m gateway.cli.devices devices list --data-dir DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli.admin_client import admin_call, admin_token
from gateway.cli.common import iso_seconds, one_line_errors, run_cli
from gateway.errors import ConfigError, RegistryError
from gateway.groups import parse_label_changes
from gateway.registry import Registry, check_device_id, load_or_create_key, normalize_cidrs
from gateway.secret_files import private_dir, private_umask
from gateway.state_files import running_address
from gateway.storage.backends import cli_config, open_storage, storage_arguments
from gateway.storage.base import DeviceRecord

DEVICE_COMMANDS = ("devices", "jwt")
REMOVE_HELP = ("decommission the device: it leaves the registry (its credentials stop working), a running "
               "gateway ends its session at once and its MQTT bridge clears the device's Home Assistant "
               "discovery and its retained topics (no gateway running: the gateway clears them when it next "
               "connects to the broker). Its readings are kept until retention (readings_retention_days) and "
               "can still be exported")


def add_device_commands(subparsers: Any) -> None:
    """Add the ``devices`` and ``jwt`` sub-commands to an argparse subparsers object."""
    common = storage_arguments()

    devices = subparsers.add_parser(
        "devices", help="manage the device registry (safe while the gateway runs)",
        description="Manage registered devices. Tokens are shown once, by add and rotate.")
    devices.set_defaults(devices_command="devices")
    actions = devices.add_subparsers(dest="devices_action", required=True, metavar="ACTION")

    p = actions.add_parser("add", parents=[common], help="register a device and print its token")
    p.add_argument("device_id", help="1-64 characters from A-Z a-z 0-9 _ - . :")
    p.add_argument("--label", default="", help="free text shown in listings")
    p.add_argument("--cidr", action="append", default=[], metavar="CIDR",
                   help="allow only this address/network (repeatable; default any)")

    p = actions.add_parser("list", parents=[common], help="list devices (never shows tokens)")
    p.add_argument("--json", action="store_true", help="JSON array instead of a table")

    p = actions.add_parser("show", parents=[common], help="show one device as JSON")
    p.add_argument("device_id")

    for name, text in (("disable", "refuse the device's credentials (history is kept)"),
                       ("enable", "accept the device's credentials again"),
                       ("rotate", "issue a new token and print it; the old one stops working"),
                       ("revoke", "remove the device's token; it can no longer authenticate with one")):
        p = actions.add_parser(name, parents=[common], help=text)
        p.add_argument("device_id")

    p = actions.add_parser(
        "remove", aliases=["delete"], parents=[common], description=REMOVE_HELP,
        help="decommission the device: registry, session, Home Assistant entities (its readings are kept "
             "until retention)")
    p.add_argument("device_id")
    p.add_argument("--url", help="the running gateway's URL (default: the address it left in its data directory)")
    p.add_argument("--admin-token", help="instead of <data-dir>/admin.token")

    p = actions.add_parser("label", parents=[common], help="set, drop or show the device's labels (groups)",
                           description="Labels select devices for group commands (command --group label=KEY or "
                                       "label=KEY=VALUE). KEY=VALUE or KEY (a tag) sets, KEY- drops; none shows them.")
    p.add_argument("device_id")
    p.add_argument("changes", nargs="*", metavar="KEY=VALUE|KEY|KEY-")

    p = actions.add_parser("allow", parents=[common], help="set or show the device's address allowlist")
    p.add_argument("device_id")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--cidr", action="append", default=[], metavar="CIDR",
                       help="allowed address/network (repeatable; replaces the list)")
    group.add_argument("--any", action="store_true", help="clear the list: any address")

    p = subparsers.add_parser("jwt", parents=[common], help="mint an HS256 JWT for a device (development)")
    p.set_defaults(devices_command="jwt")
    p.add_argument("device_id")
    p.add_argument("--secret-file", required=True, help="file holding the gateway's jwt_secret")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")


def run_devices_command(args: argparse.Namespace) -> int:
    """Run a parsed ``devices``/``jwt`` command; 0 on success, 2 (message on stderr) on error."""
    if getattr(args, "devices_command", None) == "jwt":
        return one_line_errors(lambda: _jwt(args))
    return one_line_errors(lambda: asyncio.run(_devices(args)))


def _public(record: DeviceRecord) -> dict[str, Any]:
    """A record without its digest."""
    return {"device_id": record.device_id, "enabled": record.enabled,
            "token": "active" if record.token_digest is not None else "revoked",
            "token_created_ms": record.token_created_ms, "allow_cidrs": list(record.allow_cidrs),
            "label": record.label, "labels": dict(record.labels), "created_ms": record.created_ms}


def _table(records: list[DeviceRecord]) -> str:
    rows = [("DEVICE", "ENABLED", "TOKEN", "ALLOW", "CREATED", "LABELS", "LABEL")]
    for r in records:
        rows.append((r.device_id, "yes" if r.enabled else "NO", "active" if r.token_digest else "revoked",
                     ",".join(r.allow_cidrs) or "any", iso_seconds(r.created_ms), labels_text(r.labels) or "-",
                     r.label.replace("\n", " ")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
                     for row in rows).rstrip() + "\n"


def labels_text(labels: dict[str, str]) -> str:
    """``site=greenhouse,tag`` (a tag is shown without ``=``)."""
    return ",".join(f"{k}={v}" if v else k for k, v in labels.items())


def _print_token(device_id: str, token: str, verb: str) -> None:
    print(f"{verb} device {device_id}. Its token is below, shown only now: put it on the device "
          f"(edgewire firmware config or agent settings). Lost tokens cannot be recovered, "
          f"only rotated: devices rotate {device_id}", file=sys.stderr)
    sys.stderr.flush()
    print(token, flush=True)


async def _devices(args: argparse.Namespace) -> int:
    action = "remove" if args.devices_action == "delete" else args.devices_action
    config = cli_config(args)
    if action == "remove":
        check_device_id(args.device_id)
        url = args.url or running_address(config.data_dir).url
        if url:  # the running gateway removes it: its session ends and its bridge clears the broker now
            token = admin_token(config.data_dir, args.admin_token)
            await admin_call(url, token, {"t": "remove", "device_id": args.device_id})
            print(f"device {args.device_id} removed: its credentials no longer work, its session (if any) is "
                  "closed, and the gateway's MQTT bridge (if configured) clears its Home Assistant discovery and "
                  "its retained topics now; its readings are kept until retention (readings_retention_days)",
                  file=sys.stderr)
            return 0
    data_dir, db = Path(config.data_dir), config.database
    if action == "add":
        check_device_id(args.device_id)  # refuse bad input before creating anything
        normalize_cidrs(args.cidr)  # refuse bad input before creating anything
        private_dir(data_dir)
        if config.storage_kind != "postgresql":
            private_dir(db.parent)
    elif config.storage_kind != "postgresql" and not db.exists():
        raise RegistryError(f"no database at {db}; check --data-dir/--db (it is created by the gateway's "
                            "first start or by `devices add`)")
    needs_key = action in ("add", "rotate")
    key = load_or_create_key(data_dir) if needs_key else b""
    storage = open_storage(config, commit_interval_ms=0)
    await storage.open()
    try:
        registry = Registry(storage, key)
        if action == "add":
            token = await registry.add(args.device_id, label=args.label, allow=args.cidr)
            _print_token(args.device_id, token, "Registered")
        elif action == "list":
            records = await registry.list()
            if args.json:
                print(json.dumps([_public(r) for r in records], indent=2))
            elif records:
                sys.stdout.write(_table(records))
            else:
                print("no devices registered; add one with: devices add ID", file=sys.stderr)
        elif action == "show":
            print(json.dumps(_public(await registry.get(args.device_id)), indent=2))
        elif action == "disable":
            await registry.disable(args.device_id)
            print(f"device {args.device_id} disabled: its credentials are refused (device_disabled) "
                  "from its next connection", file=sys.stderr)
        elif action == "enable":
            await registry.enable(args.device_id)
            print(f"device {args.device_id} enabled", file=sys.stderr)
        elif action == "rotate":
            token = await registry.rotate(args.device_id)
            _print_token(args.device_id, token, "Rotated the token of")
        elif action == "revoke":
            await registry.revoke(args.device_id)
            print(f"device {args.device_id}: token revoked; its history stays. Issue a new token with "
                  f"devices rotate {args.device_id}", file=sys.stderr)
        elif action == "remove":
            await registry.delete(args.device_id)
            print(f"device {args.device_id} removed from the registry (no gateway is running here): its "
                  "credentials no longer work; the gateway's MQTT bridge clears its Home Assistant discovery when "
                  "it next connects to the broker (a gateway running elsewhere: within a minute); its readings are "
                  "kept until retention (readings_retention_days)", file=sys.stderr)
        elif action == "label":
            if args.changes:
                changes, remove = parse_label_changes(args.changes)
                labels = await registry.set_labels(args.device_id, changes, remove)
            else:
                labels = (await registry.get(args.device_id)).labels
            print(labels_text(labels) or "no labels")
        elif action == "allow":
            if args.any or args.cidr:
                cidrs = await registry.set_allow(args.device_id, [] if args.any else args.cidr)
            else:
                cidrs = (await registry.get(args.device_id)).allow_cidrs
            print(" ".join(cidrs) if cidrs else "any")
        else:  # pragma: no cover - argparse restricts the choices
            raise RegistryError(f"unknown action {action!r}")
    finally:
        await storage.close()
    return 0


def _jwt(args: argparse.Namespace) -> int:
    from gateway.auth import MIN_HS_SECRET, mint_jwt
    from gateway.secret_files import read_secret

    check_device_id(args.device_id)
    if not args.ttl > 0:
        raise ConfigError("--ttl: must be greater than 0 seconds")
    secret = read_secret(args.secret_file, "--secret-file")
    if len(secret.encode()) < MIN_HS_SECRET:
        raise ConfigError(f"--secret-file: the secret must be at least {MIN_HS_SECRET} bytes")
    print(mint_jwt(secret, args.device_id, args.ttl), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m gateway.cli.devices devices ...`` / ``jwt ...``."""
    parser = argparse.ArgumentParser(prog="python -m gateway.cli.devices",
                                     description="Edgewire device registry")
    add_device_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    private_umask()
    return run_cli(lambda: run_devices_command(args))


if __name__ == "__main__":
    raise SystemExit(main())
