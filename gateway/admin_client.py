"""Client side of the admin API (/v1/admin, docs/protocol.md §10), used by the CLI commands.

Every expected failure (gateway down, token refused, TLS, timeout, error reply) is a
GatewayError whose one-line message says what to check.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError


def admin_token(data_dir: str, given: str | None = None, token_file: str | None = None) -> str:
    """The admin token: ``given``, else ``token_file``, else ``<data_dir>/admin.token``."""
    if given:
        return given
    path = Path(token_file) if token_file else Path(data_dir) / "admin.token"
    try:
        token = path.read_text().strip()
    except OSError as err:
        hint = "check --admin-token-file" if token_file else "pass --admin-token-file or run on the gateway host"
        raise GatewayError(f"no admin token: cannot read {path} ({err.strerror}); {hint}") from None
    if not token:
        raise GatewayError(f"no admin token: {path} is empty")
    return token


def client_ssl(cafile: str | None) -> ssl.SSLContext | None:
    """A TLS context trusting ``cafile`` (e.g. the gateway's self-signed certificate), or None."""
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as err:
        raise GatewayError(f"--cafile {cafile}: cannot load it ({err})") from None


async def admin_call(url: str, token: str, request: dict[str, Any], timeout: float = 30.0,
                     ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """Send one request to /v1/admin and return the reply (GatewayError on an error reply or failure)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    endpoint = url.rstrip("/") + "/v1/admin"
    options: dict[str, Any] = {"ssl": ssl_context} if ssl_context is not None else {}
    try:
        async with connect(endpoint, additional_headers={"Authorization": f"Bearer {token}"},
                           open_timeout=timeout, **options) as ws:
            await ws.send(json.dumps(dict(request, id="1")))
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    except InvalidURI:
        raise GatewayError(f"--url {url!r}: not a ws:// or wss:// URL") from None
    except InvalidStatus as err:
        status = err.response.status_code
        hint = "the admin token was refused: check it" if status == 401 else "is this an Edgewire gateway?"
        raise GatewayError(f"{endpoint} answered HTTP {status}: {hint}") from None
    except ssl.SSLError as err:
        raise GatewayError(f"TLS with {endpoint} failed ({err.reason or err}); pass --cafile with the "
                           "gateway's certificate, or check the host name in --url") from None
    except (OSError, InvalidHandshake, TimeoutError) as err:
        raise GatewayError(f"cannot reach the admin API at {endpoint} ({str(err) or type(err).__name__}); "
                           "is the gateway running, and is --url right?") from None
    if reply.get("t") != "ok":
        raise GatewayError(f"{reply.get('code')}: {reply.get('msg')}")
    return reply
