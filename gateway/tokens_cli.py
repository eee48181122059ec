"""``python -m gateway tokens add|list|revoke``: dashboard tokens with roles (viewer, operator).

Works on the gateway's storage directly, also while the gateway runs: a new token works at
once, a revoked one is refused from the next connection and before the next operator action,
and open dashboards holding it are closed within ``registry_recheck_s``. ``add`` prints the
token as the last stdout line, only then. Errors print ``error: ...`` on stderr, status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli_common import iso_seconds, one_line_errors
from gateway.dashboard_auth import FILE_TOKEN_NAME, add_token, check_name
from gateway.errors import RegistryError
from gateway.registry import load_or_create_key
from gateway.storage.backends import cli_config, open_storage, storage_arguments
from gateway.storage.base import DASHBOARD_ROLES

TOKEN_COMMANDS = ("tokens",)


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
    if action == "add":
        check_name(args.name)  # refuse bad input before creating anything
        data_dir.mkdir(parents=True, exist_ok=True)
    elif config.storage_kind != "postgresql" and not config.database.exists():
        raise RegistryError(f"no database at {config.database}; check --data-dir/--db (it is created by the "
                            "gateway's first start or by `tokens add`)")
    storage = open_storage(config, commit_interval_ms=0)
    await storage.open()
    try:
        if action == "add":
            token = await add_token(storage, load_or_create_key(data_dir), args.name, args.role)
            print(f"Created the {args.role} token {args.name!r}. It is below, shown only now; open the "
                  f"dashboard as http://HOST:PORT/#token=<token>. Revoke it with: tokens revoke {args.name}",
                  file=sys.stderr)
            sys.stderr.flush()
            print(token, flush=True)
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
