"""``edgewire-agent`` / ``python -m edge``: ``check`` reads each sensor once, ``run`` runs the agent.

Exit codes: 0 ok, 1 runtime failure (or a sensor failed in ``check``), 2 bad
configuration (the message names the key), 75 restart requested by the gateway.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from edge import __version__, logs
from edge.config import DEFAULT_PATH, ENV_PATH, AgentConfig, load
from edge.errors import ConfigError, EdgeError, SensorError

LOG = logging.getLogger("edgewire.edge.cli")
EXIT_CONFIG = 2


def check(cfg: AgentConfig) -> int:
    """Read every configured sensor once and print its values; 1 if any failed."""
    from edge.agent import apply_pin_factory
    from edge.sensors.base import SensorContext, build_sensor

    note = apply_pin_factory(cfg)
    if note:
        print(f"note: {note}")
    if not cfg.sensors:
        print("no sensors configured ([[sensors]] in the config)")
        return 1
    failed = 0
    ctx = SensorContext(cfg.backend)
    for spec in cfg.sensors:
        label = f"{spec.name} ({spec.type})"
        sensor = None
        try:
            sensor = build_sensor(spec, ctx)
            sample = sensor.read()
        except SensorError as err:
            failed += 1
            print(f"{label}: FAILED: {err}")
            continue
        finally:
            if sensor is not None:
                sensor.close()
        values = ", ".join(f"{name}={value:g}" for name, value in sample.metrics.items())
        print(f"{label}: {values} [{sample.quality}]")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Every expected failure ends in one line on stderr and a non-zero exit, never a traceback."""
    os.umask(0o077)  # the queue, the status file and anything else the agent writes are private
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("edgewire-agent: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="edgewire-agent", description="Edgewire Raspberry Pi edge agent")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--config", help=f"config file (default ${ENV_PATH} or {DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="read each configured sensor once and print the values")
    sub.add_parser("run", help="run the agent (systemd runs this)")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as err:
        print(f"edgewire-agent: {err}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(cfg.log_level)
    if args.command == "check":
        try:
            return check(cfg)
        except EdgeError as err:
            print(f"edgewire-agent: {err}", file=sys.stderr)
            return 1
    from edge.agent import run

    return run(cfg)
