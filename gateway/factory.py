"""Assemble a Gateway from its configuration (storage, registry, authenticator, secrets) and run it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway import registry as registry_mod
from gateway import state_files
from gateway.alerts.webhook import load_secret
from gateway.auth import Authenticator
from gateway.bus import Bus, open_bus
from gateway.config import GatewayConfig
from gateway.logs import log
from gateway.sd_notify import ServiceNotifier
from gateway.secret_files import private_dir, read_secret
from gateway.server import Gateway
from gateway.storage.backends import open_storage
from gateway.storage.base import ReadingRow
from gateway.urls import dashboard_url, gateway_base_url
from gateway.workers import Host, check_workers

JWT_SECRET_ENV = "EDGEWIRE_JWT_SECRET"


async def build_gateway(config: GatewayConfig, bus: Bus | None = None, sock: socket.socket | None = None,
                        worker: tuple[int, int] | None = None, siblings: list[str] | None = None,
                        store: Callable[[list[ReadingRow]], Awaitable[list[ReadingRow]]] | None = None,
                        alert_owner: str | None = None) -> Gateway:
    """The gateway of ``config``; a worker process (gateway/worker.py) passes its bus, its listening
    socket, (index, count) and its siblings' instance ids."""
    private_dir(config.data_dir)
    storage = open_storage(config)
    if bus is None:
        bus = open_bus(config.bus, config.instance_id, lease_ttl_s=config.lease_ttl_s,
                       max_pending_commands=config.command_max_pending)
    if config.bus and not os.environ.get(registry_mod.KEY_ENV):
        log("token_key_not_shared", logging.WARNING, hint=f"with a bus, every instance must share the token key: "
            f"set {registry_mod.KEY_ENV} (hex) on all of them, or devices are refused where their "
            "token was not issued")
    token_key = registry_mod.load_or_create_key(config.data_dir)
    registry = registry_mod.Registry(storage, token_key)
    jwt_secret = os.environ.get(JWT_SECRET_ENV) or (
        read_secret(config.jwt_secret_file, "jwt_secret_file") if config.jwt_secret_file else None)
    public_key = read_secret(config.jwt_public_key_file, "jwt_public_key_file") if config.jwt_public_key_file else None
    authenticator = Authenticator(
        storage, token_key, jwt_secret=jwt_secret, jwt_public_key_pem=public_key,
        jwt_algorithms=["HS256", "ES256", "RS256"], global_allow=config.allow_cidrs,
        trusted_proxies=config.trusted_proxies)
    admin_token = registry_mod.load_or_create_admin_token(config.data_dir)
    dashboard_token = None
    if config.dashboard_auth != "off":  # "auto" asks for it from clients beyond loopback
        dashboard_token = registry_mod.load_or_create_secret(config.data_dir, "dashboard.token", "ewd_",
                                                             "dashboard token")
    webhook_secrets = {hook.name: load_secret(hook) for hook in config.webhooks}  # never logged
    return Gateway(config, storage, authenticator, registry, admin_token, dashboard_token,
                   webhook_secrets=webhook_secrets, bus=bus, sock=sock, worker=worker, siblings=siblings,
                   store=store, alert_owner=alert_owner)


def banner(config: GatewayConfig, port: int, dashboard_token: str | None, interactive: bool) -> str:
    """The start-up line: where the gateway listens and the dashboard's address with its token in the
    URL fragment (the browser never sends it). Only on a terminal: a service's stdout goes to its
    log or the journal, where a token must not, so there the line says which file holds the token
    and which command prints the address with it."""
    base = gateway_base_url(config.host, port, bool(config.tls_cert))
    if dashboard_token is None:
        dashboard = dashboard_url(base, None)
    elif interactive:
        dashboard = dashboard_url(base, dashboard_token)
    else:
        token_file = Path(config.data_dir) / "dashboard.token"
        dashboard = (f"{dashboard_url(base, None)}; its operator token is in {token_file}: "
                     f"`python -m gateway tokens url --data-dir {config.data_dir} --base-url {base}` prints "
                     "the address with it")
    return f"edgewire gateway listening on {base} (dashboard {dashboard})"


async def run_gateway(config: GatewayConfig) -> int:
    """Build every part from ``config``, serve until SIGTERM/SIGINT, then shut down cleanly.

    Returns the exit status: 0, or 1 if a background task kept failing or a shutdown step failed.
    With ``workers`` > 1 this process is the host of that many worker processes (gateway/workers.py)."""
    count = check_workers(config)
    if count:
        return await run_host(config, count)
    gateway = await build_gateway(config)
    await gateway.start()
    print(banner(config, gateway.port, gateway.dashboard_auth.file_token, sys.stdout.isatty()), flush=True)
    notifier = ServiceNotifier()  # systemd: READY=1 now, WATCHDOG=1 while the loop is healthy
    notifier.ready(f"listening on {config.host}:{gateway.port}")
    watchdog = asyncio.get_running_loop().create_task(notifier.run(lambda: gateway.draining))
    await gateway.run_forever()
    watchdog.cancel()
    return gateway.exit_code


async def run_host(config: GatewayConfig, count: int) -> int:
    """The host process of ``count`` workers: start them, notify systemd, restart a dead one, drain
    them all on SIGTERM/SIGINT (gateway/workers.py)."""
    host = Host(config, count)
    loop = asyncio.get_running_loop()
    try:
        port = await host.start()
    except BaseException:
        await host.abort()
        raise
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(host.shutdown()))
    token = registry_mod.load_or_create_secret(config.data_dir, "dashboard.token", "ewd_", "dashboard token") \
        if config.dashboard_auth != "off" else None
    state_files.gateway_started(config, port)  # <data_dir>/storage and gateway.addr, for the CLIs
    print(banner(config, port, token, sys.stdout.isatty()), flush=True)
    notifier = ServiceNotifier()
    notifier.ready(f"listening on {config.host}:{port} with {count} workers")
    watchdog = loop.create_task(notifier.run(lambda: host.stopping))
    supervisor = loop.create_task(host.supervise())
    await host.stopped.wait()
    state_files.gateway_stopped(config)
    supervisor.cancel()
    watchdog.cancel()
    return host.exit_code
