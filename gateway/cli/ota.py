"""``python -m gateway ota upload|pubkey|list|show|delete|devices|rollout ...`` (docs/ota.md).

Releases (upload, list, show, delete) and the devices' update states work on the gateway's storage
directly, also while the gateway runs (like ``devices``): ``upload`` signs with the key in the data
directory (``<data_dir>/ota-signing.pem``, created on first use, mode 0600) or ``--key``.
Rollouts go through the running gateway's admin API (like ``command``), whose engine drives them.
Errors print one ``error: ...`` line on stderr, status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from gateway.cli.admin_client import admin_call, admin_token, gateway_address
from gateway.cli.common import iso_seconds, one_line_errors
from gateway.config import load_config
from gateway.errors import OtaError
from gateway.ota.admin import OtaAdmin
from gateway.ota.manifest import load_or_create_signing_key, public_key_hex
from gateway.ota.release import prepare_release, signed_release
from gateway.storage.backends import cli_config, open_storage, storage_arguments
from gateway.storage.ota_backends import UNAVAILABLE, ota_store

COMMAND = "ota"


def _admin_arguments() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="gateway TOML config (its host, port, TLS and data_dir)")
    common.add_argument("--url", help="gateway URL, ws(s):// or http(s):// (default: the running gateway's address "
                        "in its data directory, else the config's)")
    common.add_argument("--data-dir", dest="data_dir", default=None, help="where admin.token is")
    common.add_argument("--admin-token", dest="admin_token", help="instead of <data-dir>/admin.token")
    return common


def add_ota_command(subparsers: Any) -> None:
    storage = storage_arguments()
    admin = _admin_arguments()
    ota = subparsers.add_parser(COMMAND, help="over-the-air updates: releases and rollouts (docs/ota.md)")
    actions = ota.add_subparsers(dest="ota_action", required=True, metavar="ACTION")

    p = actions.add_parser("upload", parents=[storage], help="build, sign and store a release")
    p.add_argument("--kind", required=True, choices=["esp32", "pi"])
    p.add_argument("--version", required=True, help="1-32 characters from 0-9 A-Z a-z . + -")
    p.add_argument("files", nargs="+", metavar="FILE_OR_DIR",
                   help="esp32: the app as `python firmware/flash.py --release DIR` stages it (.py compiled to .mpy; "
                        "never boot.py, main.py, slots or config.json); pi: the agent's wheel")
    p.add_argument("--key", help="PEM P-256 private key to sign with (default <data-dir>/ota-signing.pem)")
    p.add_argument("--min-runtime", dest="min_runtime",
                   help="lowest MicroPython (esp32, default 1.22.0) or Python (pi, default 3.11) version")

    p = actions.add_parser("pubkey", help="print the public key devices verify releases with (ota_pubkey)")
    p.add_argument("--data-dir", dest="data_dir", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--key", help="PEM P-256 private key (default <data-dir>/ota-signing.pem, created if missing)")

    p = actions.add_parser("list", parents=[storage], help="list releases")
    p.add_argument("--json", action="store_true")
    for name, text in (("show", "show a release and its manifest as JSON"),
                       ("delete", "delete a release (not while a rollout uses it)")):
        p = actions.add_parser(name, parents=[storage], help=text)
        p.add_argument("release", help="<kind>-<version>, such as esp32-1.2.0")
    actions.add_parser("devices", parents=[storage], help="each device's latest update state as JSON")

    rollout = actions.add_parser("rollout", help="offer a release to devices, canary first")
    steps = rollout.add_subparsers(dest="rollout_action", required=True, metavar="ACTION")
    p = steps.add_parser("create", parents=[admin], help="start a rollout")
    p.add_argument("release")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--group", help="label=NAME: the devices whose registry label is NAME")
    who.add_argument("--devices", help="a,b,c: these devices")
    p.add_argument("--canary", default="0%", help="share offered first; the rest once all of them are good "
                   "(default 0%%)")
    p.add_argument("--max-failures", dest="max_failures", default="0",
                   help="N or P%%: failed or rolled back devices tolerated; one more stops the rollout (default 0)")
    steps.add_parser("list", parents=[admin], help="list rollouts")
    for name, text in (("show", "a rollout and its devices' states"), ("pause", "stop offering; downloads go on"),
                       ("resume", "go on offering"), ("abort", "stop offering and serving the release")):
        p = steps.add_parser(name, parents=[admin], help=text)
        p.add_argument("rollout", help="its id, such as ro-1a2b3c4d")


def run_ota_command(args: argparse.Namespace) -> int:
    if args.ota_action == "rollout":
        return one_line_errors(lambda: _rollout(args))
    if args.ota_action == "pubkey":
        return one_line_errors(lambda: _pubkey(args))
    return one_line_errors(lambda: asyncio.run(_releases(args)))


def _pubkey(args: argparse.Namespace) -> int:
    config = load_config(args.config, overrides={"data_dir": args.data_dir})
    print(public_key_hex(load_or_create_signing_key(config.data_dir, args.key)))
    return 0


async def _releases(args: argparse.Namespace) -> int:
    config = cli_config(args)
    action = args.ota_action
    if config.storage_kind == "none":
        raise OtaError("ota_unavailable", UNAVAILABLE)
    if action == "upload":  # the files, then the key, then storage: bad input changes nothing
        now = int(time.time() * 1000)
        manifest, files = prepare_release(args.kind, args.version, args.files, now, args.min_runtime)
        key = load_or_create_signing_key(config.data_dir, args.key)
        built = signed_release(args.kind, args.version, manifest, files, key, now), files
    elif config.storage_kind == "sqlite" and not config.database.exists():
        raise OtaError("ota_unavailable", f"no database at {config.database}; check --data-dir/--db (it is created "
                       "by the gateway's first start or by `ota upload`)")
    storage = open_storage(config, commit_interval_ms=0)
    store = ota_store(storage)
    await storage.open()
    try:
        admin = OtaAdmin(store, storage.list_devices)
        if action == "upload":
            release, files = built
            if not await store.put_release(release, files):
                raise OtaError("release_exists", f"release {release.release_id} exists already; releases never "
                               "change: upload a new version")
            print(f"stored release {release.release_id}: {len(files)} files, {release.size} bytes, signed",
                  file=sys.stderr)
            print(release.release_id)
        elif action == "list":
            releases = (await admin.releases({}))["releases"]
            if args.json:
                print(json.dumps(releases, indent=2))
            elif not releases:
                print("no releases; add one with: ota upload --kind esp32 --version V DIR", file=sys.stderr)
            for r in releases if not args.json else []:
                print(f"{r['release']:<24} {r['kind']:<6} {r['size']:>10}  {iso_seconds(r['created'])}")
        elif action == "show":
            print(json.dumps((await admin.release({"release": args.release}))["release"], indent=2))
        elif action == "delete":
            await admin.delete({"release": args.release})
            print(f"release {args.release} deleted", file=sys.stderr)
        else:
            print(json.dumps((await admin.reports({}))["devices"], indent=2))
    finally:
        await storage.close()
    return 0


def _rollout(args: argparse.Namespace) -> int:
    given: dict[str, str] = {}
    config = load_config(args.config, overrides={"data_dir": args.data_dir}, given=given)
    token = admin_token(config.data_dir, args.admin_token)
    url = gateway_address(args.url, config, given)
    action = args.rollout_action
    request: dict[str, Any] = {"t": "ota_rollouts"} if action == "list" else {
        "t": f"ota_rollout_{action}" if action != "show" else "ota_rollout", "rollout": getattr(args, "rollout", "")}
    if action == "create":
        request = {"t": "ota_rollout_create", "release": args.release, "canary": args.canary,
                   "max_failures": args.max_failures}
        if args.group is not None:
            request["group"] = args.group
        else:
            request["devices"] = [d for d in args.devices.split(",") if d]
    reply = asyncio.run(admin_call(url, token, request))
    reply.pop("t", None)
    reply.pop("id", None)
    print(json.dumps(reply, indent=2))
    return 0
