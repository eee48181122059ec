"""``python -m gateway tokens add|list|revoke|url``: dashboard tokens with roles (viewer, operator).

Works on the gateway's storage directly, also while the gateway runs: a new token works at
once, a revoked one is refused from the next connection and before the next operator action,
and open dashboards holding it are closed within ``registry_recheck_s``. ``add`` prints the
token as the last stdout line, only then (with ``--url``, the dashboard's address holding it).
``url`` prints the dashboard's address holding ``<data_dir>/dashboard.token`` (an operator
token). Both print to stdout only, for a terminal: never into a log. Errors print ``error: ...``
on stderr, status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import iso_seconds, one_line_errors
from gateway.config import GatewayConfig
from gateway.dashboard.roles import FILE_TOKEN_NAME, add_token, check_name
from gateway.errors import ConfigError, RegistryError
from gateway.registry import load_or_create_key
from gateway.secret_files import read_secret
from gateway.storage.backends import cli_config, open_storage, storage_arguments
from gateway.storage.base import DASHBOARD_ROLES
from gateway.urls import dashboard_url, gateway_base_url, split_server_url

TOKEN_COMMANDS = ("tokens",)
BASE_URL_HELP = ("the gateway's address as a browser reaches it, http(s)://HOST[:PORT] (default: from the "
                 "configuration's host, port and TLS; behind a proxy give the proxy's address)")


def base_url(config: GatewayConfig, given: str | None) -> str:
    """The dashboard's base address: ``given`` (checked: http or https, a host, no query or
    fragment), else the configuration's own address."""
    if given is None:
        return gateway_base_url(config.host, config.port, bool(config.tls_cert))
    expected = "expected http(s)://HOST[:PORT][/PATH]"
    parts, _scheme, _port = split_server_url("--base-url", given, ("http", "https"), expected, repr(given[:80]))
    if parts.query or parts.fragment:
        raise ConfigError(f"--base-url: {given[:80]!r} has a query or fragment; {expected}")
    return given.rstrip("/")


def file_token_url(config: GatewayConfig, given: str | None) -> str:
    """The dashboard's address holding ``<data_dir>/dashboard.token``."""
    path = Path(config.data_dir) / FILE_TOKEN_NAME
    if not path.exists():
        raise ConfigError(f"no {path}: the gateway creates it at its first start (unless dashboard_auth is "
                          "\"off\"); check --data-dir/--config")
    return dashboard_url(base_url(config, given), read_secret(path, FILE_TOKEN_NAME))


def add_token_commands(subparsers: Any) -> None:
    common = storage_arguments()
    tokens = subparsers.add_parser(
        "tokens", help="dashboard tokens with roles (viewer, operator)",
        description="Dashboard tokens. A viewer reads; an operator also acknowledges alerts and sends "
                    "commands. A token is shown once, by add.")
    tokens.set_defaults(tokens_command=True)
    actions = tokens.add_subparsers(dest="tokens_action", required=True, metavar="ACTION")
    p = actions.add_parser("add", parents=[common], help="create a token and print it (shown only now)")
    p.add_argument("name", help="who or what holds it: 1-64 of A-Z a-z 0-9 _ . @ -")
    p.add_argument("--role", required=True, choices=DASHBOARD_ROLES)
    p.add_argument("--url", action="store_true",
                   help="print the dashboard's address holding the token (http://HOST:PORT/#token=...) instead")
    p.add_argument("--base-url", dest="base_url", metavar="URL", help=BASE_URL_HELP)
    p = actions.add_parser("url", parents=[common],
                           help="print the dashboard's address holding <data-dir>/dashboard.token (operator)")
    p.add_argument("--base-url", dest="base_url", metavar="URL", help=BASE_URL_HELP)
    p = actions.add_parser("list", parents=[common], help="list tokens (names and roles, never the tokens)")
    p.add_argument("--json", action="store_true", help="JSON array instead of a table")
    p = actions.add_parser("revoke", parents=[common], help="delete a token: it stops working at once")
    p.add_argument("name")


def run_tokens_command(args: argparse.Namespace) -> int:
    return one_line_errors(lambda: asyncio.run(_tokens(args)))


async def _tokens(args: argparse.Namespace) -> int:
    action = args.tokens_action
    config = cli_config(args)
    data_dir = Path(config.data_dir)
    if action == "url":
        print(file_token_url(config, args.base_url), flush=True)
        return 0
    base = None
    if action == "add":
        check_name(args.name)  # refuse bad input before creating anything
        if args.url or args.base_url is not None:
            base = base_url(config, args.base_url)
        data_dir.mkdir(parents=True, exist_ok=True)
    elif config.storage_kind != "postgresql" and not config.database.exists():
        raise RegistryError(f"no database at {config.database}; check --data-dir/--db (it is created by the "
                            "gateway's first start or by `tokens add`)")
    storage = open_storage(config, commit_interval_ms=0)
    await storage.open()
    try:
        if action == "add":
            token = await add_token(storage, load_or_create_key(data_dir), args.name, args.role)
            shown = "The dashboard's address holding it" if base else "It"
            print(f"Created the {args.role} token {args.name!r}. {shown} is below, shown only now"
                  f"{'' if base else '; open the dashboard as http://HOST:PORT/#token=<token>'}. "
                  f"Revoke it with: tokens revoke {args.name}", file=sys.stderr)
            sys.stderr.flush()
            print(dashboard_url(base, token) if base else token, flush=True)
        elif action == "list":
            rows = await storage.list_dashboard_tokens()
            if args.json:
                print(json.dumps([{"name": t.name, "role": t.role, "created_ms": t.created_ms} for t in rows],
                                 indent=2))
            elif rows:
                width = max(len(t.name) for t in rows)
                print(f"{'NAME'.ljust(width)}  ROLE      CREATED")
                for t in rows:
                    print(f"{t.name.ljust(width)}  {t.role.ljust(8)}  {iso_seconds(t.created_ms)}")
            else:
                print(f"no named dashboard tokens (the {FILE_TOKEN_NAME} file is an operator token); "
                      "add one with: tokens add NAME --role viewer", file=sys.stderr)
        elif action == "revoke":
            if not await storage.delete_dashboard_token(args.name):
                raise RegistryError(f"no dashboard token named {args.name[:80]!r}; see tokens list")
            print(f"token {args.name!r} revoked: refused from now on", file=sys.stderr)
    finally:
        await storage.close()
    return 0
