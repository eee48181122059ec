"""Assemble a Gateway from its configuration: storage, registry, authenticator, secrets."""

from __future__ import annotations

import os
from pathlib import Path

from gateway import registry as registry_mod
from gateway.auth import Authenticator
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.server import Gateway
from gateway.storage.backends import open_storage


def _read_secret(path: str, key: str) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        raise ConfigError(f"{key}: cannot read {path} ({err.strerror})") from None


async def build_gateway(config: GatewayConfig) -> Gateway:
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    storage = open_storage(config)
    token_key = registry_mod.load_or_create_key(config.data_dir)
    registry = registry_mod.Registry(storage, token_key)
    jwt_secret = os.environ.get("EDGEWIRE_JWT_SECRET") or _read_secret(config.jwt_secret_file, "jwt_secret_file")
    public_key = _read_secret(config.jwt_public_key_file, "jwt_public_key_file")
    authenticator = Authenticator(
        storage, token_key, jwt_secret=jwt_secret, jwt_public_key_pem=public_key,
        jwt_algorithms=["HS256", "ES256", "RS256"], global_allow=config.allow_cidrs,
        trusted_proxies=config.trusted_proxies)
    admin_token = registry_mod.load_or_create_admin_token(config.data_dir)
    dashboard_token = None
    if config.dashboard_token_required:
        dashboard_token = registry_mod.load_or_create_secret(config.data_dir, "dashboard.token", "ewd_",
                                                             "dashboard token")
    return Gateway(config, storage, authenticator, registry, admin_token, dashboard_token)
