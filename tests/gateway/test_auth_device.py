"""Authenticator: tokens, JWT (HS256, ES256), allowlists, X-Forwarded-For, bearer parsing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.datastructures import Headers

from gateway import auth as auth_mod
from gateway.auth import Authenticator, Identity, bearer
from gateway.errors import AuthError, ConfigError
from gateway.registry import Registry
from gateway.secret_files import read_secret
from gateway.storage.sqlite import SQLiteStorage
from protocol import wire

KEY = b"\x07" * 32
SECRET = "s" * 40
NOW = 1_764_080_000.0


class Env:
    def __init__(self, storage: SQLiteStorage) -> None:
        self.storage = storage
        self.registry = Registry(storage, KEY)
        self.now = NOW

    def auth(self, **kwargs: Any) -> Authenticator:
        kwargs.setdefault("jwt_secret", SECRET)
        return Authenticator(self.storage, KEY, clock=lambda: self.now, **kwargs)


def run(tmp_path: Path, body: Callable[[Env], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        storage = SQLiteStorage(tmp_path / "e.db")
        await storage.open()
        try:
            return await body(Env(storage))
        finally:
            await storage.close()

    return asyncio.run(main())


async def refused(auth: Authenticator, code: str, status: int, **kwargs: Any) -> AuthError:
    kwargs.setdefault("device_id", None)
    kwargs.setdefault("token", None)
    kwargs.setdefault("jwt", None)
    kwargs.setdefault("address", "127.0.0.1")
    with pytest.raises(AuthError) as info:
        await auth.authenticate(**kwargs)
    assert (info.value.code, info.value.http_status) == (code, status)
    for secret in (kwargs["token"], kwargs["jwt"]):
        if secret:
            assert secret not in info.value.message
    return info.value


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return pyjwt.encode(claims, secret, algorithm="HS256")


def test_token_authentication(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        auth = env.auth()
        token = await env.registry.add("S-1")
        other = await env.registry.add("S-2")
        ident = await auth.authenticate(device_id="S-1", token=token, jwt=None, address="127.0.0.1")
        assert ident == Identity("S-1", None, "token")
        # From a header: no device id, identity comes from the token.
        ident = await auth.authenticate(device_id=None, token=token, jwt=None, address="127.0.0.1")
        assert ident.device_id == "S-1"

        failures = [
            await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-1", token=token[:-1] + "x"),
            await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-9", token=token),  # unknown id
            await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-2", token=token),  # another's id
            await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-1", token=other),
            await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-1", token=""),
            await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-1", token="ewt_" + "x" * 600),
            await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-1", token="\udcff"),
            await refused(auth, wire.E_AUTH_FAILED, 401),  # no credential
        ]
        assert {f.message for f in failures} == {"authentication failed"}

    run(tmp_path, body)


def test_revoked_rotated_and_disabled_tokens(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        auth = env.auth()
        old = await env.registry.add("S-1")
        new = await env.registry.rotate("S-1")
        await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-1", token=old)
        ident = await auth.authenticate(device_id="S-1", token=new, jwt=None, address="::1")
        assert ident.device_id == "S-1"

        await env.registry.disable("S-1")
        err = await refused(auth, wire.E_DISABLED, 403, device_id="S-1", token=new)
        assert "disabled" in err.message
        await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-1", token=old)  # wrong token: not told
        await env.registry.enable("S-1")
        await auth.authenticate(device_id="S-1", token=new, jwt=None, address="::1")

        await env.registry.revoke("S-1")
        err = await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-1", token=new)
        assert err.message == "authentication failed"

    run(tmp_path, body)


def test_token_digests_are_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # gateway.auth calls hmac.compare_digest

    async def body(env: Env) -> None:
        token = await env.registry.add("S-1")
        await env.auth().authenticate(device_id="S-1", token=token, jwt=None, address="127.0.0.1")

    run(tmp_path, body)
    digest = hmac.new(KEY, b"", hashlib.sha256).digest()
    assert len(calls) == 1 and len(calls[0][0]) == len(digest) and calls[0][0] == calls[0][1]


def test_jwt_hs256(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        auth = env.auth()
        await env.registry.add("S-1")
        exp = int(NOW) + 60
        good = hs256({"sub": "S-1", "exp": exp})
        ident = await auth.authenticate(device_id=None, token=None, jwt=good, address="127.0.0.1")
        assert ident == Identity("S-1", float(exp), "jwt")
        assert (await auth.authenticate(device_id="S-1", token=None, jwt=good, address="127.0.0.1")) == ident
        await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-2", jwt=good)

        env.now = exp  # exp is exclusive: no leeway
        await refused(auth, wire.E_EXPIRED, 401, jwt=good)
        env.now = NOW

        bad = [
            hs256({"sub": "S-1", "exp": exp}, secret="t" * 40),  # bad signature
            hs256({"sub": "S-9", "exp": exp}),  # unknown device
            hs256({"sub": "S-1"}),  # no exp
            hs256({"exp": exp}),  # no sub
            hs256({"sub": 17, "exp": exp}),
            hs256({"sub": "S-1", "exp": "later"}),
            hs256({"sub": "S-1", "exp": exp, "nbf": exp - 1}),  # not yet valid
            pyjwt.encode({"sub": "S-1", "exp": exp}, None, algorithm="none"),  # type: ignore[arg-type]
            good[:-3] + "AAA", "not.a.jwt", "x" * 5000,
        ]
        for credential in bad:
            err = await refused(auth, wire.E_AUTH_FAILED, 401, jwt=credential)
            assert err.message == "authentication failed"
        # An expired JWT with a bad signature is a bad credential, not an expired one.
        env.now = exp + 100
        await refused(auth, wire.E_AUTH_FAILED, 401, jwt=hs256({"sub": "S-1", "exp": exp}, secret="t" * 40))
        env.now = NOW

        await env.registry.disable("S-1")
        await refused(auth, wire.E_DISABLED, 403, jwt=good)
        # Without a configured secret, JWTs are refused.
        await refused(env.auth(jwt_secret=None), wire.E_AUTH_FAILED, 401, jwt=good)

    run(tmp_path, body)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_jwt_es256_and_algorithm_confusion(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    async def body(env: Env) -> None:
        auth = env.auth(jwt_public_key_pem=pem, jwt_algorithms=["HS256", "ES256", "RS256"])
        assert auth.jwt_algorithms == ["ES256", "HS256"]
        await env.registry.add("S-1")
        exp = int(NOW) + 60
        good = pyjwt.encode({"sub": "S-1", "exp": exp}, key, algorithm="ES256")
        ident = await auth.authenticate(device_id=None, token=None, jwt=good, address="127.0.0.1")
        assert ident == Identity("S-1", float(exp), "jwt")
        await refused(auth, wire.E_AUTH_FAILED, 401,
                      jwt=pyjwt.encode({"sub": "S-1", "exp": exp}, other, algorithm="ES256"))
        env.now = exp + 1
        await refused(auth, wire.E_EXPIRED, 401, jwt=good)
        env.now = NOW
        # HS256 signed with the public key as the HMAC secret must not pass.
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps({"sub": "S-1", "exp": exp}).encode())
        sig = _b64(hmac.new(pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
        await refused(auth, wire.E_AUTH_FAILED, 401, jwt=f"{header}.{payload}.{sig}")
        # An RS256 token when only an EC key is configured.
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        await refused(auth, wire.E_AUTH_FAILED, 401,
                      jwt=pyjwt.encode({"sub": "S-1", "exp": exp}, rsa_key, algorithm="RS256"))
        # Only ES256 allowed: an HS256 token with the right secret is refused.
        es_only = env.auth(jwt_public_key_pem=pem, jwt_algorithms=["ES256"])
        await refused(es_only, wire.E_AUTH_FAILED, 401, jwt=hs256({"sub": "S-1", "exp": exp}))

    run(tmp_path, body)


def test_jwt_configuration_errors(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        with pytest.raises(ConfigError, match="at least 32 bytes"):
            env.auth(jwt_secret="short")
        with pytest.raises(ConfigError, match="PEM"):
            env.auth(jwt_public_key_pem="not a key")
        with pytest.raises(ConfigError, match="not supported"):
            env.auth(jwt_algorithms=["none"])
        with pytest.raises(ConfigError, match="trusted_proxies"):
            env.auth(trusted_proxies=["10.0.0.0/99"])

    run(tmp_path, body)


def test_global_and_device_allowlists(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        token = await env.registry.add("S-1")
        pinned = await env.registry.add("S-2", allow=["192.168.7.0/24"])
        auth = env.auth(global_allow=["127.0.0.0/8", "192.168.0.0/16", "fd00::/8"])
        for address in ("127.0.0.1", "::ffff:127.0.0.1", "fd00::5", "192.168.200.1"):
            await auth.authenticate(device_id="S-1", token=token, jwt=None, address=address)
        for address in ("10.0.0.1", "::1", "garbage", ""):
            err = await refused(auth, wire.E_ADDRESS, 403, device_id="S-1", token=token, address=address)
            assert "not allowed" in err.message
        # Outside the global list even an invalid credential gets address_not_allowed (no lookup).
        await refused(auth, wire.E_ADDRESS, 403, device_id="S-1", token="ewt_wrong", address="10.0.0.1")

        await auth.authenticate(device_id="S-2", token=pinned, jwt=None, address="192.168.7.9")
        await refused(auth, wire.E_ADDRESS, 403, device_id="S-2", token=pinned, address="192.168.8.9")
        # A wrong credential from outside the device's list learns nothing about the device.
        await refused(auth, wire.E_AUTH_FAILED, 401, device_id="S-2", token="ewt_wrong",
                      address="192.168.8.9")
        jwt = hs256({"sub": "S-2", "exp": int(NOW) + 60})
        await refused(auth, wire.E_ADDRESS, 403, jwt=jwt, address="192.168.8.9")
        await auth.authenticate(device_id=None, token=None, jwt=jwt, address="192.168.7.1")

        # An empty global list allows any address; the device list still applies.
        open_auth = env.auth()
        await open_auth.authenticate(device_id="S-1", token=token, jwt=None, address="203.0.113.5")
        await refused(open_auth, wire.E_ADDRESS, 403, device_id="S-2", token=pinned, address="203.0.113.5")

    run(tmp_path, body)


def test_client_address_honours_forwarded_for_only_from_trusted_proxies(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        plain = env.auth()
        assert plain.client_address("198.51.100.7", {"X-Forwarded-For": "10.0.0.1"}) == "198.51.100.7"
        auth = env.auth(trusted_proxies=["10.0.0.0/8", "::1"])
        xff = "X-Forwarded-For"
        # Peer is not a proxy: the header is ignored.
        assert auth.client_address("198.51.100.7", {xff: "1.2.3.4"}) == "198.51.100.7"
        # Peer is a proxy: the rightmost address that is not a proxy.
        assert auth.client_address("10.0.0.2", {xff: "1.2.3.4"}) == "1.2.3.4"
        assert auth.client_address("10.0.0.2", {xff: "6.6.6.6, 1.2.3.4, 10.0.0.9"}) == "1.2.3.4"
        assert auth.client_address("::1", {"x-forwarded-for": "2001:db8::5"}) == "2001:db8::5"
        assert auth.client_address("::ffff:10.0.0.2", {xff: "1.2.3.4:5555"}) == "1.2.3.4"
        assert auth.client_address("10.0.0.2", {xff: "[2001:db8::7]:443"}) == "2001:db8::7"
        # Repeated headers are one list, in order.
        headers = Headers([(xff, "6.6.6.6"), (xff, "1.2.3.4, 10.1.1.1")])
        assert auth.client_address("10.0.0.2", headers) == "1.2.3.4"
        # Only proxies in the chain: the leftmost; no header: the peer.
        assert auth.client_address("10.0.0.2", {xff: "10.0.0.5, 10.0.0.6"}) == "10.0.0.5"
        assert auth.client_address("10.0.0.2", {}) == "10.0.0.2"
        # A garbage entry is not an address, so an allowlist cannot admit it.
        garbage = auth.client_address("10.0.0.2", {xff: "1.2.3.4, evil"})
        assert garbage == "evil"
        strict = env.auth(trusted_proxies=["10.0.0.0/8"], global_allow=["10.0.0.0/8"])
        token = await env.registry.add("S-1")
        await refused(strict, wire.E_ADDRESS, 403, device_id="S-1", token=token, address=garbage)
        spoofed = strict.client_address("203.0.113.9", {xff: "10.0.0.3"})  # not from a proxy
        await refused(strict, wire.E_ADDRESS, 403, device_id="S-1", token=token, address=spoofed)

    run(tmp_path, body)


def test_bearer_header_parsing() -> None:
    assert bearer({}) == (None, None)
    assert bearer({"Authorization": "Bearer ewt_abc"}) == ("ewt_abc", None)
    assert bearer(Headers({"authorization": "bearer eyJ.x.y"})) == (None, "eyJ.x.y")
    assert Authenticator.bearer({"Authorization": "Bearer  ewt_abc "}) == ("ewt_abc", None)
    for bad in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "ewt_abc",
                "Bearer ewt_" + "x" * 600):
        with pytest.raises(AuthError) as info:
            bearer({"Authorization": bad})
        assert info.value.code == wire.E_AUTH_FAILED and info.value.http_status == 401
    with pytest.raises(AuthError):
        bearer(Headers([("Authorization", "Bearer a"), ("Authorization", "Bearer b")]))


def test_read_secret_file_and_mint(tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    path.write_text(SECRET + "\n")
    assert read_secret(str(path), "jwt_secret_file") == SECRET
    with pytest.raises(ConfigError, match="jwt_secret_file"):
        read_secret(str(tmp_path / "missing"), "jwt_secret_file")
    token = auth_mod.mint_jwt(SECRET, "S-1", 30, now=NOW)
    claims = pyjwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"sub": "S-1", "iat": int(NOW), "exp": int(NOW) + 30}


def test_jwt_with_an_absurd_exp_is_refused_at_auth(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        auth = env.auth()
        await env.registry.add("S-1")
        for exp in (2**64 - 1, 1e30, auth_mod.MAX_EXP + 1):
            await refused(auth, wire.E_AUTH_FAILED, 401, jwt=hs256({"sub": "S-1", "exp": exp}))
        ident = await auth.authenticate(device_id=None, token=None, jwt=hs256({"sub": "S-1", "exp": auth_mod.MAX_EXP}),
                                        address="127.0.0.1")
        assert ident.expires_at == auth_mod.MAX_EXP

    run(tmp_path, body)
