"""Server URLs in settings (``bus``, ``mqtt_url``, ``nats_url``): split and checked without a client library;
and the gateway's own address and its dashboard's, as the banner and the CLIs print them.

Errors are ConfigError naming the setting and saying what is expected, never showing a password.
"""

from __future__ import annotations

import re
import socket
import urllib.parse
from collections.abc import Container

from gateway.errors import ConfigError


def hide_password(text: str) -> str:
    """``text`` without any ``user:password@`` part, for error messages."""
    return re.sub(r"//[^/@]*@", "//***@", text)


def split_server_url(key: str, text: str, schemes: Container[str], expected: str,
                     shown: str) -> tuple[urllib.parse.SplitResult, str, int | None]:
    """Split ``text`` and check that it names one of ``schemes`` (lower-cased) and a host; the parts,
    the scheme and the port (None if not given). ConfigError otherwise: ``key``, the URL as ``shown``
    (hide_password), what is wrong, then ``expected``. The caller checks the path, query and fragment."""
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"{key}: {shown} is not a URL ({err}); {expected}") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ConfigError(f"{key}: scheme {scheme or '(none)'!r} is not supported; {expected}")
    if not parts.hostname:
        raise ConfigError(f"{key}: {shown} names no host; {expected}")
    return parts, scheme, port


def gateway_base_url(host: str, port: int, tls: bool) -> str:
    """The address a browser on another machine uses for a gateway listening on ``host:port``: a
    wildcard host becomes this machine's name, an IPv6 address is bracketed."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def dashboard_url(base: str, token: str | None) -> str:
    """The dashboard's address under ``base``; with ``token`` in the URL fragment (``/#token=…``),
    which browsers never send to a server. Print it on a terminal only, never into a log."""
    url = base.rstrip("/") + "/"
    return f"{url}#token={urllib.parse.quote(token, safe='')}" if token else url
