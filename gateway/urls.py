"""Server URLs in settings (``bus``, ``mqtt_url``, ``nats_url``): split and checked without a client library.

Errors are ConfigError naming the setting and saying what is expected, never showing a password.
"""

from __future__ import annotations

import re
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
