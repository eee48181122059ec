"""Device authentication: tokens, JWTs, IP allowlists, client address behind proxies.

``Authenticator.authenticate`` turns a credential into an Identity or raises AuthError
with a protocol code (docs/protocol.md section 2):

- ``auth_failed`` (HTTP 401): wrong/unknown/revoked token, unknown device, bad JWT
  signature, missing ``sub``/``exp``, malformed credential. Always the same message,
  so the answer does not tell which device ids exist.
- ``credential_expired`` (401): the JWT's ``exp`` has passed (checked after its signature).
- ``device_disabled`` (403): valid credential, device disabled in the registry.
- ``address_not_allowed`` (403): client address outside the global allowlist, or outside
  the device's own allowlist (checked once the credential is valid).

Storage failures propagate as StorageError. Nothing here logs, and no message contains a
credential.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt

from gateway.errors import AuthError, ConfigError
from gateway.registry import token_digest
from gateway.storage.base import DeviceRecord, DeviceRegistry
from protocol import wire

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FAILED_MESSAGE = "authentication failed"
MAX_TOKEN = 512
MAX_JWT = 4096
MAX_EXP = 253402300799  # 9999-12-31T23:59:59Z: a JWT expiring later is refused (auth_failed)
MIN_HS_SECRET = 32  # bytes; RFC 7518 3.2: at least the hash size
SUPPORTED_ALGORITHMS = ("HS256", "ES256", "ES384", "ES512", "RS256")
_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is. ``expires_at`` (Unix s) is set for JWTs: end the session then."""

    device_id: str
    expires_at: float | None = None
    method: str = "token"  # "token" or "jwt"


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _failed() -> AuthError:
    return AuthError(wire.E_AUTH_FAILED, FAILED_MESSAGE, 401)


def parse_ip(text: str) -> IPAddress | None:
    """An address from a peer or X-Forwarded-For entry (``[v6]:port``, ``v4:port`` too); None if invalid."""
    text = text.strip()
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # 192.0.2.1:443
        text = text.split(":", 1)[0]
    if "%" in text:  # fe80::1%eth0
        text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:192.0.2.1 from a dual-stack socket
    return address


def parse_networks(cidrs: Iterable[str], key: str) -> tuple[IPNetwork, ...]:
    """CIDR strings to networks; ConfigError naming ``key`` for a bad entry."""
    result = []
    for cidr in cidrs:
        try:
            result.append(ipaddress.ip_network(str(cidr).strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{key}: {str(cidr)[:64]!r} is not an IP address or CIDR") from None
    return tuple(result)


@functools.lru_cache(maxsize=4096)
def _device_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...] | None:
    """Parsed per-device allowlist; None if the stored list is corrupt (then nothing is allowed)."""
    try:
        return parse_networks(cidrs, "allow_cidrs")
    except ConfigError:
        return None


def _in_networks(address: IPAddress | None, networks: tuple[IPNetwork, ...]) -> bool:
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)


def _header_values(headers: Mapping[str, str] | Any, name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive) from websockets Headers or a plain mapping."""
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:
        return [str(v) for v in get_all(name)]
    lower = name.lower()
    return [str(v) for k, v in headers.items() if str(k).lower() == lower]


def bearer_credential(headers: Mapping[str, str] | Any) -> str | None:
    """The credential of ``Authorization: Bearer X``; None when there is no Authorization header.

    Raises AuthError(auth_failed) for a repeated, malformed or non-Bearer header.
    """
    values = _header_values(headers, "Authorization")
    if not values:
        return None
    if len(values) > 1:
        raise _failed()
    scheme, _, credential = values[0].strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise _failed()
    return credential


def bearer(headers: Mapping[str, str] | Any) -> tuple[str | None, str | None]:
    """A device's ``Authorization: Bearer X`` -> (token, None) for a device token, (None, jwt) otherwise.

    (None, None) when there is no Authorization header (first-frame auth follows).
    Raises AuthError(auth_failed) for a malformed or non-Bearer header, or an oversized credential.
    """
    credential = bearer_credential(headers)
    if credential is None:
        return (None, None)
    if wire.is_device_token(credential):
        if len(credential) > MAX_TOKEN:
            raise _failed()
        return (credential, None)
    if len(credential) > MAX_JWT:
        raise _failed()
    return (None, credential)


class Authenticator:
    """Checks device credentials against the registry. One per gateway; safe to share."""

    bearer = staticmethod(bearer)

    def __init__(self, storage: DeviceRegistry, token_key: bytes, *, jwt_secret: str | None = None,
                 jwt_public_key_pem: str | None = None, jwt_algorithms: Iterable[str] | None = None,
                 global_allow: Iterable[str] = (), trusted_proxies: Iterable[str] = (),
                 jwt_audience: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.token_key = token_key
        self.clock = clock
        self.jwt_audience = jwt_audience
        self.global_allow = parse_networks(global_allow, "allow_cidrs")
        self.trusted_proxies = parse_networks(trusted_proxies, "trusted_proxies")
        wanted = list(jwt_algorithms) if jwt_algorithms is not None else list(SUPPORTED_ALGORITHMS)
        for name in wanted:
            if name not in SUPPORTED_ALGORITHMS:
                raise ConfigError(f"jwt_algorithms: {name!r} is not supported "
                                  f"(use {', '.join(SUPPORTED_ALGORITHMS)})")
        # alg -> verification key. Each algorithm has exactly one key, so a token cannot
        # pick its key (no HS256-with-the-public-key confusion).
        self._jwt_keys: dict[str, Any] = {}
        if jwt_secret:
            if len(jwt_secret.encode()) < MIN_HS_SECRET:
                raise ConfigError(f"jwt_secret: must be at least {MIN_HS_SECRET} bytes for HS256 (generate "
                                  "one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
            if "HS256" in wanted:
                self._jwt_keys["HS256"] = jwt_secret.encode()
        if jwt_public_key_pem:
            key, alg = self._load_public_key(jwt_public_key_pem)
            if alg in wanted:
                self._jwt_keys[alg] = key

    @staticmethod
    def _load_public_key(pem: str) -> tuple[Any, str]:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(pem.encode())
        except (ValueError, TypeError):
            raise ConfigError("jwt_public_key_file: not a PEM public key "
                              "(expected -----BEGIN PUBLIC KEY-----)") from None
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHM:
            return key, _EC_ALGORITHM[key.curve.name]
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise ConfigError("jwt_public_key_file: RSA keys must have at least 2048 bits")
            return key, "RS256"
        raise ConfigError("jwt_public_key_file: use an EC P-256/P-384/P-521 (ES256/384/512) "
                          "or RSA (RS256) key")

    @property
    def jwt_algorithms(self) -> list[str]:
        """The JWT algorithms this authenticator accepts (empty: JWTs are refused)."""
        return sorted(self._jwt_keys)

    # ------------------------------------------------------------ addresses
    def client_address(self, peer_ip: str, headers: Mapping[str, str] | Any) -> str:
        """The client's address: the TCP peer, or from X-Forwarded-For if the peer is a trusted proxy.

        Walking X-Forwarded-For from the right, trusted proxies are skipped; the first
        other entry is the client. Entries further left are client-supplied and ignored.
        """
        peer = parse_ip(peer_ip)
        normalized_peer = str(peer) if peer is not None else peer_ip
        if not self.trusted_proxies or not _in_networks(peer, self.trusted_proxies):
            return normalized_peer
        values = _header_values(headers, "X-Forwarded-For")
        entries = [e.strip() for value in values for e in value.split(",") if e.strip()]
        if not entries:
            return normalized_peer
        for entry in reversed(entries):
            address = parse_ip(entry)
            if address is None:
                return entry[:64]  # garbage from a proxy: not an address, so no allowlist admits it
            if not _in_networks(address, self.trusted_proxies):
                return str(address)
        leftmost = parse_ip(entries[0])
        return str(leftmost) if leftmost is not None else normalized_peer

    def address_allowed(self, address: str, record: DeviceRecord | None = None) -> bool:
        """True if ``address`` passes the global allowlist and, given a record, the device's."""
        parsed = parse_ip(address)
        if self.global_allow and not _in_networks(parsed, self.global_allow):
            return False
        if record is not None and record.allow_cidrs:
            networks = _device_networks(tuple(record.allow_cidrs))
            if networks is None or not _in_networks(parsed, networks):
                return False
        return True

    # ------------------------------------------------------------ credentials
    async def authenticate(self, *, device_id: str | None, token: str | None, jwt: str | None,
                           address: str) -> Identity:
        """Check a token (with optional device id) or a JWT from ``address``; return the Identity."""
        if self.global_allow and not self.address_allowed(address):
            raise AuthError(wire.E_ADDRESS, f"address {address[:64]} is not allowed to connect "
                            "(gateway allow_cidrs)", 403)
        if token is not None:
            record, identity = await self._check_token(device_id, token)
        elif jwt is not None:
            record, identity = await self._check_jwt(device_id, jwt)
        else:
            raise _failed()
        if not record.enabled:
            raise AuthError(wire.E_DISABLED, f"device {record.device_id} is disabled in the registry; "
                            "ask an operator to enable it", 403)
        if not self.address_allowed(address, record):
            raise AuthError(wire.E_ADDRESS, f"address {address[:64]} is not allowed for device "
                            f"{record.device_id} (its allowlist)", 403)
        return identity

    async def _check_token(self, device_id: str | None, token: str) -> tuple[DeviceRecord, Identity]:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            raise _failed()
        if device_id is not None and not isinstance(device_id, str):
            raise _failed()
        digest = token_digest(self.token_key, token)
        record = await self.storage.device_by_token_digest(digest)
        if record is None or record.token_digest is None:
            raise _failed()
        if not hmac.compare_digest(record.token_digest, digest):
            raise _failed()
        if device_id is not None and device_id != record.device_id:
            raise _failed()
        return record, Identity(record.device_id, None, "token")

    async def _check_jwt(self, device_id: str | None, token: str) -> tuple[DeviceRecord, Identity]:
        if not self._jwt_keys or not isinstance(token, str) or len(token) > MAX_JWT:
            raise _failed()
        try:
            alg = pyjwt.get_unverified_header(token).get("alg")
        except pyjwt.PyJWTError:
            raise _failed() from None
        if not isinstance(alg, str) or alg not in self._jwt_keys:
            raise _failed()
        key = self._jwt_keys[alg]
        try:
            claims = pyjwt.decode(
                token, key, algorithms=[alg], audience=self.jwt_audience, leeway=0,
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_aud": self.jwt_audience is not None})
        except pyjwt.PyJWTError:
            raise _failed() from None
        # Expiry and not-before against our clock (pyjwt would use its own).
        now = self.clock()
        exp: Any = claims.get("exp")
        nbf: Any = claims.get("nbf")
        if not _finite_number(exp) or (nbf is not None and not _finite_number(nbf)):
            raise _failed()
        if exp > MAX_EXP:  # 2**64 - 1, 1e30: no such date; it would not even serialise in the welcome
            raise _failed()
        if now >= exp:
            raise AuthError(wire.E_EXPIRED, "credential expired; fetch a new JWT", 401)
        if nbf is not None and now < nbf:
            raise _failed()
        sub = claims.get("sub")
        if not isinstance(sub, str) or not wire.valid_device_id(sub):
            raise _failed()
        if device_id is not None and device_id != sub:
            raise _failed()
        record = await self.storage.get_device(sub)
        if record is None:
            raise _failed()
        return record, Identity(record.device_id, float(exp), "jwt")


def mint_jwt(secret: str, device_id: str, ttl_s: float, now: float | None = None) -> str:
    """An HS256 JWT for ``device_id`` valid for ``ttl_s`` seconds, rounded up to whole seconds
    (development, tests and the simulator)."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": device_id, "iat": issued, "exp": issued + max(1, math.ceil(ttl_s))}
    return str(pyjwt.encode(claims, secret, algorithm="HS256"))
