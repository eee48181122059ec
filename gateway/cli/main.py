"""Command line: ``edgewire-gateway serve|devices|export|command|backup|init|check-config|register``
(also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.cli.admin_client import admin_call, admin_token, gateway_address
from gateway.cli.common import run_cli, use_uvloop
from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError
from gateway.secret_files import private_umask

DEFAULTS = GatewayConfig()


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway until SIGTERM/SIGINT")
    p.add_argument("--config", help="TOML file (settings at top level or under [gateway])")
    p.add_argument("--host", help=f"listen address (default {DEFAULTS.host})")
    p.add_argument("--port", type=int, help=f"listen port (default {DEFAULTS.port}; 0 = any free port)")
    p.add_argument("--data-dir", dest="data_dir", help=f"state directory (default {DEFAULTS.data_dir})")
    p.add_argument("--db", dest="db_path", help="SQLite file (default <data-dir>/edgewire.db)")
    p.add_argument("--storage", help="sqlite (default), postgresql://USER@HOST:PORT/DB, "
                                     "or none: readings are not stored (benchmarks)")
    p.add_argument("--rate", type=float, help=f"frames/s per device (default {DEFAULTS.rate:g})")
    p.add_argument("--burst", type=float, help=f"rate-limit burst (default {DEFAULTS.burst:g})")
    p.add_argument("--dashboard-interval-ms", dest="dashboard_interval_ms", type=float,
                   help=f"dashboard update coalescing (default {DEFAULTS.dashboard_interval_ms:g})")
    p.add_argument("--auth-timeout", dest="auth_timeout_s", type=float,
                   help=f"seconds for handshake + auth (default {DEFAULTS.auth_timeout_s:g})")
    p.add_argument("--no-compression", dest="compression", action="store_const", const=False,
                   help="do not offer permessage-deflate")
    p.add_argument("--log-format", dest="log_format", choices=["json", "text"])
    p.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-uvloop", dest="uvloop", action="store_const", const=False,
                   help="use asyncio's own event loop even if uvloop is installed")
    p.add_argument("--mqtt", dest="mqtt_url", metavar="URL",
                   help="forward to an MQTT broker with Home Assistant discovery: mqtt://HOST:PORT or "
                        "mqtts://HOST:PORT (docs/mqtt.md)")
    p.add_argument("--nats", dest="nats_url", metavar="URL", help="forward to NATS JetStream: nats://HOST:PORT")
    p.add_argument("--workers", type=int, help="worker processes, all on the one port (default: one per core; "
                   "1 = a single process; docs/performance.md)")
    p.add_argument("--bus", help="join other instances: redis://HOST:PORT/DB or nats://HOST:PORT "
                                 "(default: none, one process; docs/scaling.md)")
    p.add_argument("--instance-id", dest="instance_id",
                   help="this instance's name on the bus (default: the host name's first label)")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from gateway.factory import run_gateway
    from gateway.logs import setup_logging

    keys = ("host", "port", "data_dir", "db_path", "storage", "rate", "burst", "dashboard_interval_ms",
            "auth_timeout_s", "compression", "log_format", "log_level", "uvloop", "mqtt_url", "nats_url", "bus",
            "instance_id", "workers")
    config = load_config(args.config, overrides={k: getattr(args, k) for k in keys}, warn=warn)
    setup_logging(config.log_level, config.log_format)
    use_uvloop(config.uvloop)
    return asyncio.run(run_gateway(config))


def _command(args: argparse.Namespace) -> int:
    group = args.group or ("devices=" + ",".join(args.device) if args.device else None)
    if args.group and args.device:
        raise GatewayError("give --group or --device, not both")
    words = list(args.words)
    if group is None and len(words) < 2:
        raise GatewayError("give DEVICE NAME, or NAME with --group label=KEY[=VALUE] / devices=ID,... or --device ID")
    device_id = None if group is not None else words.pop(0)
    name = words.pop(0)
    command_args: dict[str, Any] = {}
    for item in [*words, *args.args]:  # (words left over: not key=value, refused below)
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GatewayError(f"argument {item!r} must be key=value (for example seconds=30)")
        try:
            command_args[key] = json.loads(value)
        except ValueError:
            command_args[key] = value
    given: dict[str, str] = {}
    config = load_config(args.config, overrides={"data_dir": args.data_dir}, warn=warn, given=given)
    token = admin_token(config.data_dir, args.admin_token)
    url = gateway_address(args.url, config, given)
    if group is not None:
        from gateway.cli.group_command import run_group_command

        return run_group_command(url, token, group, name, command_args, args.timeout, args.parallel, args.json)
    reply = asyncio.run(admin_call(url, token, {
        "t": "command", "device_id": device_id, "name": name, "args": command_args,
        "timeout": args.timeout}, args.timeout + 5))
    result = reply["result"]
    if not result.get("ok"):  # the device refused it: one error line, as every CLI failure
        reason = str(result.get("msg") or result.get("code") or "no reason given")
        raise GatewayError(f"device {device_id} refused {name}: {reason}")
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewire-gateway", description="Edgewire gateway")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _serve_parser(sub)
    from gateway.cli import devices as devices_cli
    from gateway.cli import export as export_cli
    from gateway.cli import forward as forward_cli
    from gateway.cli import ops as ops_cli
    from gateway.cli import ota as ota_cli
    from gateway.cli import tokens as tokens_cli

    devices_cli.add_device_commands(sub)
    tokens_cli.add_token_commands(sub)
    export_cli.add_export_command(sub)
    ops_cli.add_ops_commands(sub)
    forward_cli.add_forward_command(sub)
    ota_cli.add_ota_command(sub)
    p = sub.add_parser("command", help="send a command to a device, or to a group, and print the result(s)",
                       usage="%(prog)s [options] DEVICE NAME [KEY=VALUE ...] | --group G NAME [KEY=VALUE ...]",
                       description="One device: its result as JSON (a device offline that connected before gets "
                       "the command if it comes back within --timeout). A group (--group, --device): one line "
                       "per device and a summary (--json: one JSON object); members offline now are reported "
                       "device_offline (nothing is queued for them), disabled ones skipped; exit status 0 if "
                       "every member answered ok, else 1 with the summary as the error line. Any other failure "
                       "(a single device's refusal included) is one error line and status 2 "
                       "(docs/protocol.md sections 8 and 10).")
    p.add_argument("words", nargs="+", metavar="[DEVICE] NAME [KEY=VALUE ...]",
                   help="the device (not with --group/--device), the command (set_interval, set_thresholds, "
                   "set_output, reboot, ping), then its arguments as key=value (values parsed as JSON when "
                   "possible), before or after the options")
    p.add_argument("--group", metavar="G", help="label=KEY (devices with that label), label=KEY=VALUE (terms "
                   "joined by , must all match) or devices=ID,ID,... (labels: devices label DEVICE KEY=VALUE)")
    p.add_argument("--device", action="append", default=[], metavar="ID",
                   help="a member of the group (repeatable; instead of --group)")
    p.add_argument("--parallel", type=int, default=16, help="group: commands in flight at once (1-64, default 16)")
    p.add_argument("--json", action="store_true", help="group: one JSON object (results and summary)")
    p.add_argument("--config", help="gateway TOML config (its host, port, TLS and data_dir)")
    p.add_argument("--url", help="gateway URL, ws(s):// or http(s):// (default: EDGEWIRE_HOST/EDGEWIRE_PORT, "
                   "else the address the running gateway left in its data directory, else the config's, "
                   f"else ws://{DEFAULTS.host}:{DEFAULTS.port})")
    p.add_argument("--data-dir", default=None, help="where admin.token is (default: the config's data_dir)")
    p.add_argument("--admin-token", help="instead of <data-dir>/admin.token")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the result (a group: for all of them; default 10)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``command``'s key=value arguments may also come after its options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not (args.cmd == "command" and all("=" in item and not item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.cmd == "command":  # ids and command names hold no "=": what does is an argument
        args.args = [*(w for w in args.words if "=" in w), *extra]
        args.words = [w for w in args.words if "=" not in w]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    private_umask()  # the data dir, database and secrets are the gateway user's alone
    from gateway.cli import devices as devices_cli
    from gateway.cli import export as export_cli
    from gateway.cli import forward as forward_cli
    from gateway.cli import ops as ops_cli
    from gateway.cli import ota as ota_cli
    from gateway.cli import tokens as tokens_cli
    from gateway.logs import setup_logging

    if args.cmd != "serve":
        setup_logging("warning", "text")  # warnings (a readable secret file) as readable lines

    def run() -> int:
        if args.cmd == "serve":
            return _serve(args)
        if args.cmd == "command":
            return _command(args)
        if args.cmd == "export":
            return export_cli.run_export(args)
        if args.cmd in tokens_cli.TOKEN_COMMANDS:
            return tokens_cli.run_tokens_command(args)
        if args.cmd in ops_cli.COMMANDS:
            return ops_cli.run_ops_command(args)
        if args.cmd == forward_cli.COMMAND:
            return forward_cli.run_forward_command(args)
        if args.cmd == ota_cli.COMMAND:
            return ota_cli.run_ota_command(args)
        return devices_cli.run_devices_command(args)

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
