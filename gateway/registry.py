"""Device registry: tokens, enable/disable, per-device allowlists, and the gateway's secrets.

Tokens are ``ewt_`` + 32 URL-safe base64 characters (192 random bits), shown once.
Only ``HMAC-SHA256(token_key, token)`` is stored. ``token_key`` is 32 random bytes in
``<data_dir>/token.key`` (mode 0600, created atomically on first use), or the hex
string in the environment variable ``EDGEWIRE_TOKEN_KEY`` (at least 64 hex digits),
which wins over the file. Changing the key invalidates every device token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.errors import ConfigError, RegistryError
from gateway.groups import changed_labels
from gateway.secret_files import private_dir, read_secret, read_secret_bytes, write_secret_file
from gateway.storage.base import DeviceRecord, DeviceRegistry
from protocol import wire

TOKEN_PREFIX = wire.DEVICE_TOKEN_PREFIX
ADMIN_TOKEN_PREFIX = "ewa_"
KEY_FILE = "token.key"
ADMIN_TOKEN_FILE = "admin.token"
KEY_ENV = "EDGEWIRE_TOKEN_KEY"
KEY_BYTES = 32
MAX_LABEL = 256
MAX_CIDRS = 64


def generate_token() -> str:
    """A new device token: ``ewt_`` + 32 URL-safe characters (192 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def token_digest(key: bytes, token: str) -> bytes:
    """HMAC-SHA256 of the token under the server key: what the registry stores."""
    return hmac.new(key, token.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def load_or_create_key(data_dir: str | Path) -> bytes:
    """The token HMAC key: EDGEWIRE_TOKEN_KEY (hex) if set, else DATA_DIR/token.key (created if missing)."""
    env = os.environ.get(KEY_ENV)
    if env is not None:
        try:
            key = bytes.fromhex(env.strip())
        except ValueError:
            raise ConfigError(f"{KEY_ENV}: must be hex digits (e.g. from `openssl rand -hex 32`)") from None
        if len(key) < KEY_BYTES:
            raise ConfigError(f"{KEY_ENV}: must be at least {KEY_BYTES} bytes ({2 * KEY_BYTES} hex digits)")
        return key
    path = private_dir(data_dir) / KEY_FILE
    if not path.exists():
        write_secret_file(path, secrets.token_bytes(KEY_BYTES))
    key = read_secret_bytes(path, "token key")
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"token key {path} holds {len(key)} bytes, expected {KEY_BYTES}; restore it from a backup "
            "(device tokens depend on it) or, to re-issue every token, delete it and rotate all devices")
    return key


def load_or_create_admin_token(data_dir: str | Path) -> str:
    """The admin API token in DATA_DIR/admin.token (mode 0600), created on first use."""
    return load_or_create_secret(data_dir, ADMIN_TOKEN_FILE, ADMIN_TOKEN_PREFIX, "admin token")


def load_or_create_secret(data_dir: str | Path, name: str, prefix: str, what: str) -> str:
    """A random token in DATA_DIR/name (mode 0600), created on first use."""
    path = private_dir(data_dir) / name
    if not path.exists():
        token = prefix + secrets.token_urlsafe(32)
        write_secret_file(path, (token + "\n").encode())
    text = read_secret(path, what)
    if len(text) < 16:
        raise ConfigError(f"{what} {path} is empty or shorter than 16 characters; "
                          "delete it to create a new one")
    return text


def verify_admin_token(expected: str, presented: str | None) -> bool:
    """Constant-time check of a presented admin (or dashboard) token against the expected one."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"),
                               presented.encode("utf-8", "surrogatepass"))


def normalize_cidrs(cidrs: Iterable[str]) -> list[str]:
    """Validate addresses/CIDRs; return them normalized (``10.0.0.7/8`` -> ``10.0.0.0/8``)."""
    if isinstance(cidrs, str):
        cidrs = [cidrs]
    result: list[str] = []
    for item in cidrs:
        if not isinstance(item, str):
            raise RegistryError(f"allow: {item!r} is not a string address or CIDR")
        try:
            network = str(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise RegistryError(f"allow: {item[:64]!r} is not an IP address or CIDR "
                                "(examples: 10.0.0.0/8, 192.168.1.7, fd00::/8)") from None
        if network not in result:
            result.append(network)
    if len(result) > MAX_CIDRS:
        raise RegistryError(f"allow: at most {MAX_CIDRS} entries per device")
    return result


def check_device_id(device_id: object) -> str:
    """``device_id`` if it is a valid device id (protocol.wire.valid_device_id, the one rule every
    tool applies), else RegistryError saying what an id looks like. Non-strings are refused:
    5, null, true and 5.5 are not ids."""
    if not wire.valid_device_id(device_id):
        shown = repr(device_id)[:80] if isinstance(device_id, str) else f"{type(device_id).__name__} {device_id!r:.40}"
        raise RegistryError(f"invalid device id {shown}: use a string of 1-64 characters from A-Z a-z 0-9 _ - . :")
    assert isinstance(device_id, str)
    return device_id


class Registry:
    """Registry operations over the storage's device registry. Every method raises RegistryError with what to check."""

    def __init__(self, storage: DeviceRegistry, token_key: bytes, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.token_key = token_key
        self.clock = clock

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def get(self, device_id: str) -> DeviceRecord:
        """The device's record; RegistryError if it is not registered."""
        check_device_id(device_id)
        record = await self.storage.get_device(device_id)
        if record is None:
            raise RegistryError(f"unknown device {device_id!r}; `devices list` shows the registered ids")
        return record

    async def add(self, device_id: str, label: str = "", allow: Iterable[str] | None = None) -> str:
        """Register a new, enabled device; return its token (the only time it is shown)."""
        check_device_id(device_id)
        if not isinstance(label, str) or len(label) > MAX_LABEL:
            raise RegistryError(f"label: a string of at most {MAX_LABEL} characters")
        cidrs = normalize_cidrs(allow or [])
        token = generate_token()
        now = self._now_ms()
        digest = token_digest(self.token_key, token)
        record = DeviceRecord(device_id=device_id, enabled=True, token_digest=digest, allow_cidrs=cidrs,
                              label=label, created_ms=now, token_created_ms=now)
        if not await self.storage.create_device(record):
            raise RegistryError(f"device {device_id!r} is already registered; "
                                f"`devices rotate {device_id}` issues a new token")
        return token

    async def disable(self, device_id: str) -> None:
        """Refuse the device's credentials (E_DISABLED) until enabled again; history stays."""
        record = await self.get(device_id)
        record.enabled = False
        await self.storage.put_device(record)

    async def enable(self, device_id: str) -> None:
        record = await self.get(device_id)
        record.enabled = True
        await self.storage.put_device(record)

    async def rotate(self, device_id: str) -> str:
        """Issue a new token; the old one stops working at once. Returns the new token."""
        record = await self.get(device_id)
        token = generate_token()
        record.token_digest = token_digest(self.token_key, token)
        record.token_created_ms = self._now_ms()
        await self.storage.put_device(record)
        return token

    async def revoke(self, device_id: str) -> None:
        """Remove the device's token (it no longer authenticates); the device and its history stay."""
        record = await self.get(device_id)
        record.token_digest = None
        record.token_created_ms = None
        await self.storage.put_device(record)

    async def set_label(self, device_id: str, label: str) -> None:
        """Replace the device's label (free text shown in listings and on the dashboard)."""
        if not isinstance(label, str) or len(label) > MAX_LABEL:
            raise RegistryError(f"label: a string of at most {MAX_LABEL} characters")
        record = await self.get(device_id)
        record.label = label
        await self.storage.put_device(record)

    async def set_allow(self, device_id: str, cidrs: Iterable[str]) -> list[str]:
        """Replace the device's address allowlist (empty = any address); return it normalized."""
        normalized = normalize_cidrs(cidrs)
        record = await self.get(device_id)
        record.allow_cidrs = normalized
        await self.storage.put_device(record)
        return normalized

    async def set_labels(self, device_id: str, set_: dict[str, str] | None = None,
                         remove: Iterable[str] = ()) -> dict[str, str]:
        """Add or change the labels ``set_`` and drop the keys ``remove`` (gateway/groups.py says what a
        label is); return the device's labels. GroupError (``bad_label``) changes nothing."""
        record = await self.get(device_id)
        record.labels = changed_labels(record.labels, set_ or {}, list(remove))
        await self.storage.put_device(record)
        return record.labels

    async def delete(self, device_id: str) -> None:
        """Remove the device from the registry: its credentials stop working, and the gateway clears it
        from the MQTT broker (Home Assistant entities). Its readings stay until retention."""
        check_device_id(device_id)
        if not await self.storage.delete_device(device_id):
            raise RegistryError(f"unknown device {device_id!r}; `devices list` shows the registered ids")

    async def list(self) -> list[DeviceRecord]:
        """Every registered device, by id."""
        return await self.storage.list_devices()
