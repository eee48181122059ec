"""Client side of the admin API (/v1/admin, docs/protocol.md §10), used by the CLI commands.

Every expected failure (gateway down, token refused, TLS, timeout, error reply) is a
GatewayError whose one-line message says what to check.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import ConfigError, GatewayError
from gateway.secret_files import read_secret
from gateway.state_files import gateway_url, running_address


def admin_token(data_dir: str, given: str | None = None, token_file: str | None = None) -> str:
    """The admin token: ``given``, else ``token_file``, else ``<data_dir>/admin.token``."""
    if given:
        return given
    path = Path(token_file) if token_file else Path(data_dir) / "admin.token"
    if not path.exists():
        hint = ("check --admin-token-file" if token_file
                else "pass --admin-token, --admin-token-file or the gateway's --data-dir, or run on the gateway host")
        raise GatewayError(f"no admin token: {path} is missing; {hint}")
    try:
        return read_secret(path, "admin token")
    except ConfigError as err:
        raise GatewayError(f"no admin token: {err}") from None


def client_ssl(cafile: str | None) -> ssl.SSLContext | None:
    """A TLS context trusting ``cafile`` (e.g. the gateway's self-signed certificate), or None."""
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as err:
        raise GatewayError(f"--cafile {cafile}: cannot load it ({err})") from None


def gateway_address(url: str | None, config: GatewayConfig, given: dict[str, str]) -> str:
    """Where the CLIs reach the gateway: ``url``; else, unless ``EDGEWIRE_HOST``/``EDGEWIRE_PORT`` or
    a flag set the host or port, the address the running gateway left in its data directory
    (gateway/state_files.py; a stale one is ignored with a note on stderr); else the config's."""
    if url:
        return url
    if not any(given.get(key) in ("env", "flag") for key in ("host", "port")):
        address = running_address(config.data_dir)
        if address.note:
            print(f"note: {address.note}", file=sys.stderr)
        if address.url:
            return address.url
    return gateway_url(config.host, config.port, bool(config.tls_cert))


def websocket_url(url: str) -> str:
    """``url`` as a WebSocket URL: http(s):// maps to ws(s)://; GatewayError for another scheme."""
    scheme, sep, rest = url.partition("://")
    mapped = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme.lower()) if sep else None
    if mapped is None or not rest:
        raise GatewayError(f"--url {url[:80]!r}: not a gateway URL; give ws://HOST:PORT, wss://HOST:PORT, "
                           "http://HOST:PORT or https://HOST:PORT")
    return f"{mapped}://{rest}"


async def admin_call(url: str, token: str, request: dict[str, Any], timeout: float = 30.0,
                     ssl_context: ssl.SSLContext | None = None, max_size: int = 2**20) -> dict[str, Any]:
    """Send one request to /v1/admin and return the reply (GatewayError on an error reply or failure).
    ``max_size``: the largest reply accepted, in bytes (a group command's results can pass 1 MiB)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI, WebSocketException

    endpoint = websocket_url(url).rstrip("/") + "/v1/admin"
    options: dict[str, Any] = {"ssl": ssl_context} if ssl_context is not None else {}
    try:
        async with connect(endpoint, additional_headers={"Authorization": f"Bearer {token}"},
                           open_timeout=timeout, max_size=max_size, **options) as ws:
            await ws.send(json.dumps(dict(request, id="1")))
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    except InvalidURI:
        raise GatewayError(f"--url {url!r}: not a ws://, wss://, http:// or https:// URL") from None
    except InvalidStatus as err:
        status = err.response.status_code
        hint = ("the admin token was refused: pass the contents of <data-dir>/admin.token with --admin-token, "
                "or the right --data-dir" if status == 401 else "is this an Edgewire gateway?")
        raise GatewayError(f"{endpoint} answered HTTP {status}: {hint}") from None
    except ssl.SSLError as err:
        raise GatewayError(f"TLS with {endpoint} failed ({err.reason or err}); pass --cafile with the "
                           "gateway's certificate, or check the host name in --url") from None
    except TimeoutError:
        raise GatewayError(f"no answer from the admin API at {endpoint} within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise GatewayError(f"cannot reach the admin API at {endpoint} (connection refused): is the gateway "
                           "running? check --url, or --data-dir (a running gateway leaves its address there), "
                           "or --config/EDGEWIRE_PORT") from None
    except (OSError, InvalidHandshake, WebSocketException) as err:
        raise GatewayError(f"cannot reach the admin API at {endpoint} ({getattr(err, 'strerror', None) or err}); "
                           "is the gateway running, and is --url right?") from None
    if reply.get("t") != "ok":
        raise GatewayError(f"{reply.get('code')}: {reply.get('msg')}")
    return reply
