"""Dashboard roles and tokens: who a browser is, and what it may do.

Roles (``storage.base.DASHBOARD_ROLES``): a **viewer** reads (the dashboard stream and the GET
endpoints); an **operator** may also acknowledge and clear alerts and send commands.

Tokens: ``ewd_`` + 32 URL-safe characters (192 random bits), shown once by
``python -m gateway tokens add NAME --role ROLE``. Only ``HMAC-SHA256(token_key, token)`` is
stored (``registry.token_digest``, the device tokens' key), looked up by digest and compared in
constant time. The file ``<data_dir>/dashboard.token`` (the gateway owner's token, printed in the
start-up banner) is an operator token named ``dashboard.token``. A browser that shows no token,
where the configuration lets it in without one, is a viewer. Tokens never appear in logs.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass

from gateway.errors import RegistryError
from gateway.registry import token_digest
from gateway.storage.base import DASHBOARD_ROLES, DashboardToken, DashboardTokens

VIEWER = "viewer"
OPERATOR = "operator"
TOKEN_PREFIX = "ewd_"
FILE_TOKEN_NAME = "dashboard.token"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


@dataclass(frozen=True, slots=True)
class DashboardIdentity:
    """A dashboard client: its role and the token's name (None: no token shown)."""

    role: str
    name: str | None = None
    digest: bytes | None = None  # of a named token, to re-check it before an operator action

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR

    @property
    def actor(self) -> str:
        """Who did it, as alert acknowledgements and logs record it."""
        return f"dashboard:{self.name}" if self.name else "dashboard"


ANONYMOUS = DashboardIdentity(VIEWER)


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name == FILE_TOKEN_NAME:
        raise RegistryError(f"invalid token name {name[:80]!r}: use 1-64 characters from A-Z a-z 0-9 _ . @ -, "
                            f"starting with a letter or digit (and not {FILE_TOKEN_NAME!r})")
    return name


def check_role(role: str) -> str:
    if role not in DASHBOARD_ROLES:
        raise RegistryError(f"invalid role {role[:32]!r}: use {' or '.join(DASHBOARD_ROLES)}")
    return role


class DashboardAuth:
    """Tells who presents a dashboard token. ``file_token`` is dashboard.token's content (or None)."""

    def __init__(self, storage: DashboardTokens, token_key: bytes, file_token: str | None) -> None:
        self.storage = storage
        self.key = token_key
        self.file_token = file_token
        self._file_digest = token_digest(token_key, file_token) if file_token else None

    async def identify(self, token: str) -> DashboardIdentity | None:
        """The identity the token proves, or None if it proves none (unknown, revoked, malformed).

        Raises StorageError when the token table cannot be read."""
        digest = token_digest(self.key, token)
        if self._file_digest is not None and hmac.compare_digest(digest, self._file_digest):
            return DashboardIdentity(OPERATOR, FILE_TOKEN_NAME)
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        row = await self.storage.dashboard_token_by_digest(digest)
        if row is None or not hmac.compare_digest(row.digest, digest):
            return None
        return DashboardIdentity(row.role, row.name, digest)

    async def still_valid(self, identity: DashboardIdentity) -> bool:
        """Whether a named token still exists with the same role (checked before each operator action)."""
        if identity.digest is None:
            return True  # the file token or no token: nothing can revoke them while the gateway runs
        row = await self.storage.dashboard_token_by_digest(identity.digest)
        return row is not None and row.role == identity.role and row.name == identity.name


async def add_token(storage: DashboardTokens, token_key: bytes, name: str, role: str) -> str:
    """Create a named token; return it (the only time it is seen). RegistryError if the name is taken."""
    check_name(name)
    check_role(role)
    token = generate_token()
    created = await storage.add_dashboard_token(
        DashboardToken(name, role, token_digest(token_key, token), int(time.time() * 1000)))
    if not created:
        raise RegistryError(f"a dashboard token named {name!r} exists; revoke it first "
                            f"(tokens revoke {name}) or choose another name")
    return token
