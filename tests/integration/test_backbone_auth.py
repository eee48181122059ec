"""Auth: every refusal has its documented code, stores nothing, and leaves other devices served."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt as pyjwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from protocol import wire
from tests.helpers.devices import GoodDevice, expect_close
from tests.helpers.gateway import GatewayProcess

JWT_SECRET = "test-only-hs256-secret-0123456789abcdef"


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    secret = tmp_path / "jwt.secret"
    secret.write_text(JWT_SECRET)
    gateway = GatewayProcess(tmp_path, jwt_secret_file=str(secret))
    gateway.start()
    yield gateway
    gateway.stop()
    gateway.kill()


def refused_with_header(gw: GatewayProcess, credential: str) -> tuple[int, dict[str, str]]:
    async def attempt() -> tuple[int, dict[str, str]]:
        try:
            async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {credential}"}):
                pass
        except InvalidStatus as err:
            return err.response.status_code, json.loads(err.response.body)
        raise AssertionError("connection was accepted")

    return asyncio.run(attempt())


def refused_in_first_frame(gw: GatewayProcess, auth: dict[str, str]) -> tuple[list[dict[str, str]], int | None]:
    async def attempt() -> tuple[list[dict[str, str]], int | None]:
        async with connect(gw.device_url) as ws:
            await ws.send(json.dumps(auth))
            await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
            return await expect_close(ws)

    return asyncio.run(attempt())


def with_bystander(gw: GatewayProcess, action: Callable[[], None]) -> None:
    """Run ``action`` while a good device streams; assert it kept being served."""
    token = gw.register("bystander")

    async def run() -> None:
        async with GoodDevice(gw.device_url, "bystander", token) as good:
            before = good.acked
            await asyncio.get_running_loop().run_in_executor(None, action)
            await good.wait_acked(before + 5)

    asyncio.run(run())


def stored(gw: GatewayProcess, device_id: str) -> int:
    return gw.query("SELECT count(*) FROM readings WHERE device_id=?", (device_id,))[0][0]


def test_wrong_unknown_and_revoked_tokens(gw: GatewayProcess) -> None:
    real = gw.register("dev-a")
    revoked = gw.register("dev-r")
    gw.cli("devices", "revoke", "dev-r")

    def action() -> None:
        assert refused_with_header(gw, "ewt_" + "x" * 32) == (401, {"code": "auth_failed",
                                                                   "message": "authentication failed"})
        assert refused_with_header(gw, revoked)[1]["code"] == "auth_failed"
        frames, code = refused_in_first_frame(gw, {"t": "auth", "device_id": "dev-a", "token": real[:-2] + "zz"})
        assert code == wire.CLOSE_AUTH_FAILED and frames[-1]["code"] == "auth_failed"
        frames, code = refused_in_first_frame(gw, {"device_id": "no-such-device", "token": real})
        assert code == wire.CLOSE_AUTH_FAILED and frames[-1]["code"] == "auth_failed"
        frames, code = refused_in_first_frame(gw, {"device_id": "dev-r", "token": revoked})
        assert code == wire.CLOSE_AUTH_FAILED

    with_bystander(gw, action)
    assert stored(gw, "dev-a") == 0 and stored(gw, "dev-r") == 0 and stored(gw, "no-such-device") == 0
    assert real not in gw.log_text() and revoked not in gw.log_text()


def test_disabled_device(gw: GatewayProcess) -> None:
    token = gw.register("dev-d")
    gw.cli("devices", "disable", "dev-d")

    def action() -> None:
        status, body = refused_with_header(gw, token)
        assert (status, body["code"]) == (403, "device_disabled")
        frames, code = refused_in_first_frame(gw, {"device_id": "dev-d", "token": token})
        assert code == wire.CLOSE_DISABLED and frames[-1]["code"] == "device_disabled"

    with_bystander(gw, action)
    assert stored(gw, "dev-d") == 0
    gw.cli("devices", "enable", "dev-d")
    assert refused_with_header_or_welcome(gw, token) == "welcome"


def refused_with_header_or_welcome(gw: GatewayProcess, token: str) -> str:
    async def attempt() -> str:
        async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            return str(json.loads(await ws.recv())["t"])

    return asyncio.run(attempt())


def test_expired_and_badly_signed_jwt(gw: GatewayProcess) -> None:
    gw.register("dev-j")
    expired = pyjwt.encode({"sub": "dev-j", "exp": int(time.time()) - 10}, JWT_SECRET, algorithm="HS256")
    forged = pyjwt.encode({"sub": "dev-j", "exp": int(time.time()) + 600}, "another-secret-of-32-bytes-long!!",
                          algorithm="HS256")

    def action() -> None:
        status, body = refused_with_header(gw, expired)
        assert (status, body["code"]) == (401, "credential_expired")
        status, body = refused_with_header(gw, forged)
        assert (status, body["code"]) == (401, "auth_failed")
        frames, code = refused_in_first_frame(gw, {"t": "auth", "jwt": expired})
        assert code == wire.CLOSE_EXPIRED and frames[-1]["code"] == "credential_expired"
        frames, code = refused_in_first_frame(gw, {"t": "auth", "jwt": forged})
        assert code == wire.CLOSE_AUTH_FAILED

    with_bystander(gw, action)
    assert stored(gw, "dev-j") == 0


def test_jwt_expiry_mid_session_closes_with_reason(gw: GatewayProcess) -> None:
    gw.register("dev-m")
    token = pyjwt.encode({"sub": "dev-m", "exp": int(time.time()) + 2}, JWT_SECRET, algorithm="HS256")

    async def run() -> tuple[list[dict[str, str]], int | None]:
        async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["t"] == "welcome" and welcome["device"] == "dev-m"
            await ws.send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
            return await expect_close(ws, timeout=10)

    frames, code = asyncio.run(run())
    assert frames[0] == {"t": "ack", "seq": 1}
    assert code == wire.CLOSE_EXPIRED
    assert frames[-1]["code"] == "credential_expired"
    assert stored(gw, "dev-m") == 1


def test_address_outside_allowlist(gw: GatewayProcess) -> None:
    token = gw.register("dev-ip")
    gw.cli("devices", "allow", "dev-ip", "--cidr", "10.99.0.0/16")

    def action() -> None:
        status, body = refused_with_header(gw, token)
        assert (status, body["code"]) == (403, "address_not_allowed")
        frames, code = refused_in_first_frame(gw, {"device_id": "dev-ip", "token": token})
        assert code == wire.CLOSE_ADDRESS and frames[-1]["code"] == "address_not_allowed"

    with_bystander(gw, action)
    assert stored(gw, "dev-ip") == 0


def test_payload_naming_another_device(gw: GatewayProcess) -> None:
    token = gw.register("dev-p")
    gw.register("victim")

    async def run() -> tuple[list[dict[str, str]], int | None]:
        async with connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(await ws.recv())["t"] == "welcome"
            await ws.send(json.dumps({"t": "data", "device_id": "victim", "seq": 1,
                                      "r": [{"m": {"temperature": 99}}]}))
            return await expect_close(ws)

    def action() -> None:
        frames, code = asyncio.run(run())
        assert code == wire.CLOSE_IDENTITY and frames[-1]["code"] == "identity_mismatch"

    with_bystander(gw, action)
    assert stored(gw, "victim") == 0 and stored(gw, "dev-p") == 0


def test_registry_changes_cut_off_live_sessions(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, registry_recheck_s=0.3) as gw:
        tokens = {name: gw.register(name) for name in ("dev-dis", "dev-rev", "dev-rot", "dev-keep")}

        async def run() -> dict[str, tuple[object, int | None]]:
            conns = {}
            for name, token in tokens.items():
                conns[name] = await connect(gw.device_url, additional_headers={"Authorization": f"Bearer {token}"})
                assert json.loads(await conns[name].recv())["t"] == "welcome"
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, gw.cli, "devices", "disable", "dev-dis")
            await loop.run_in_executor(None, gw.cli, "devices", "revoke", "dev-rev")
            await loop.run_in_executor(None, gw.cli, "devices", "rotate", "dev-rot")
            codes = {}
            for name in ("dev-dis", "dev-rev", "dev-rot"):
                frames, close_code = await expect_close(conns[name], timeout=10)
                codes[name] = (frames[-1]["code"], close_code)
            await conns["dev-keep"].send(json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}}]}))
            assert json.loads(await conns["dev-keep"].recv()) == {"t": "ack", "seq": 1}
            await conns["dev-keep"].close()
            return codes

        codes = asyncio.run(run())
    assert codes == {"dev-dis": (wire.E_DISABLED, wire.CLOSE_DISABLED),
                     "dev-rev": (wire.E_AUTH_FAILED, wire.CLOSE_AUTH_FAILED),
                     "dev-rot": (wire.E_AUTH_FAILED, wire.CLOSE_AUTH_FAILED)}
