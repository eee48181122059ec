"""Dashboard roles and tokens (gateway/dashboard/roles.py) and browser actions (gateway/dashboard/actions.py):
every frame a browser may send is checked, refused with a stable code, and changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.dashboard.actions import Action, ActionError, ActionHandlers, DashboardActions
from gateway.dashboard.roles import ANONYMOUS, OPERATOR, VIEWER, DashboardAuth, DashboardIdentity, add_token
from gateway.errors import GatewayError, RegistryError, StorageError
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.storage import with_sqlite

KEY = b"k" * 32


def with_storage(tmp_path: Path, body: Callable[[SQLiteStorage], Awaitable[Any]]) -> Any:
    return with_sqlite(tmp_path / "e.db", body)


def test_tokens_identify_roles_and_revocation(tmp_path: Path) -> None:
    async def body(storage: SQLiteStorage) -> None:
        auth = DashboardAuth(storage, KEY, file_token="ewd_file-token")
        viewer_token = await add_token(storage, KEY, "wall-screen", VIEWER)
        operator_token = await add_token(storage, KEY, "alice", OPERATOR)
        assert viewer_token.startswith("ewd_") and len(viewer_token) == 36
        with pytest.raises(RegistryError, match="exists"):
            await add_token(storage, KEY, "alice", VIEWER)
        with pytest.raises(RegistryError, match="invalid role"):
            await add_token(storage, KEY, "bob", "admin")
        for bad in ("", "has space", "dashboard.token", "x" * 65, "-lead"):
            with pytest.raises(RegistryError, match="invalid token name"):
                await add_token(storage, KEY, bad, VIEWER)

        assert await auth.identify("ewd_file-token") == DashboardIdentity(OPERATOR, "dashboard.token")
        viewer = await auth.identify(viewer_token)
        operator = await auth.identify(operator_token)
        assert viewer is not None and (viewer.role, viewer.name, viewer.operator) == (VIEWER, "wall-screen", False)
        assert operator is not None and (operator.role, operator.actor) == (OPERATOR, "dashboard:alice")
        for wrong in (operator_token + "x", operator_token[:-1], "ewt_" + operator_token[4:], "", "ewd_" + "a" * 200):
            assert await auth.identify(wrong) is None
        # only digests are stored
        rows = await storage.list_dashboard_tokens()
        assert all(operator_token.encode() not in row.digest and len(row.digest) == 32 for row in rows)

        assert await auth.still_valid(operator)
        assert await storage.delete_dashboard_token("alice")
        assert not await auth.still_valid(operator)
        assert await auth.identify(operator_token) is None
        assert await auth.still_valid(ANONYMOUS)  # no token: nothing to revoke

    with_storage(tmp_path, body)


class Calls:
    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.fail: BaseException | None = None

    async def ack(self, alert_id: int, actor: str) -> dict[str, Any]:
        self.log.append(("ack", alert_id, actor))
        if self.fail:
            raise self.fail
        return {"id": alert_id, "state": "acknowledged", "acked_by": actor}

    async def clear(self, alert_id: int, actor: str) -> dict[str, Any]:
        self.log.append(("clear", alert_id, actor))
        if self.fail:
            raise self.fail
        return {"id": alert_id, "state": "cleared"}

    async def command(self, device: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.log.append(("command", device, name, args, timeout))
        if self.fail:
            raise self.fail
        return {"id": "c-1", "ok": True, "msg": "done"}


class CodedError(GatewayError, ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


OPERATOR_ID = DashboardIdentity(OPERATOR, "alice")


def run(frame: str | bytes, identity: DashboardIdentity = OPERATOR_ID, calls: Calls | None = None,
        auth: Any = None) -> tuple[dict[str, Any], Calls, list[str]]:
    calls = calls or Calls()
    counted: list[str] = []
    actions = DashboardActions(ActionHandlers(calls.ack, calls.clear, calls.command), auth, counted.append)
    reply = asyncio.run(actions.handle(identity, frame))
    return reply, calls, counted


def frame(**msg: Any) -> str:
    return json.dumps(msg)


def test_operator_actions_run_with_the_credential_identity() -> None:
    reply, calls, counted = run(frame(t="ack", id="r1", alert=42, by="mallory"))
    assert reply == {"t": "ok", "id": "r1", "alert": {"id": 42, "state": "acknowledged",
                                                     "acked_by": "dashboard:alice"}}
    assert calls.log == [("ack", 42, "dashboard:alice")] and counted == []
    reply, calls, _ = run(frame(t="clear", id=7, alert=3))
    assert reply["t"] == "ok" and reply["id"] == 7 and calls.log == [("clear", 3, "dashboard:alice")]
    reply, calls, _ = run(frame(t="command", id="r2", device="S-1", name="set_interval",
                                args={"seconds": 30, "extra": "ignored"}))
    assert reply == {"t": "ok", "id": "r2", "result": {"id": "c-1", "ok": True, "msg": "done"}}
    assert calls.log == [("command", "S-1", "set_interval", {"seconds": 30}, 10.0)]
    reply, calls, _ = run(frame(t="command", id="r3", device="S-1", name="set_output",
                                args={"output": "led", "on": True}, timeout=2.5))
    assert calls.log == [("command", "S-1", "set_output", {"output": "led", "on": True}, 2.5)]


@pytest.mark.parametrize(("sent", "code", "request_id"), [
    (b"\x00\x01", "binary_unsupported", None),
    ("{not json", "bad_json", None),
    ("[1, 2]", "bad_frame", None),
    (frame(t="ack", alert=1), "bad_frame", None),
    (frame(t="ack", id="x" * 65, alert=1), "bad_frame", None),
    (frame(t="ack", id=True, alert=1), "bad_frame", None),
    (frame(t="delete_everything", id="r"), "unknown_type", "r"),
    (frame(t=["ack"], id="r"), "unknown_type", "r"),
    (frame(t="ack", id="r"), "bad_frame", "r"),
    (frame(t="ack", id="r", alert="42"), "bad_frame", "r"),
    (frame(t="ack", id="r", alert=-1), "bad_frame", "r"),
    (frame(t="ack", id="r", alert=True), "bad_frame", "r"),
    (frame(t="clear", id="r", alert=2**70), "bad_frame", "r"),
    (frame(t="command", id="r", device="S 1", name="ping"), "bad_frame", "r"),
    (frame(t="command", id="r", name="ping"), "bad_frame", "r"),
    (frame(t="command", id="r", device="S-1", name="format_disk"), "unknown_type", "r"),
    (frame(t="command", id="r", device="S-1", name="set_interval", args={"seconds": 0}), "bad_value", "r"),
    (frame(t="command", id="r", device="S-1", name="set_interval", args={"seconds": "30"}), "bad_value", "r"),
    (frame(t="command", id="r", device="S-1", name="set_interval"), "bad_value", "r"),
    (frame(t="command", id="r", device="S-1", name="set_thresholds", args={"metric": "temperature", "low": 5,
                                                                          "high": 1}), "bad_value", "r"),
    (frame(t="command", id="r", device="S-1", name="set_output", args={"output": "led", "on": "yes"}),
     "bad_value", "r"),
    (frame(t="command", id="r", device="S-1", name="ping", args=[1]), "bad_frame", "r"),
    (frame(t="command", id="r", device="S-1", name="ping", timeout=0), "bad_value", "r"),
    (frame(t="command", id="r", device="S-1", name="ping", timeout=3600), "bad_value", "r"),
])
def test_bad_frames_are_refused_and_change_nothing(sent: str | bytes, code: str, request_id: Any) -> None:
    reply, calls, counted = run(sent)
    assert reply["t"] == "error" and reply["code"] == code and reply["id"] == request_id, reply
    assert isinstance(reply["msg"], str) and reply["msg"]
    assert calls.log == [] and counted == [code]


def test_command_usage_is_in_the_message() -> None:
    reply, _, _ = run(frame(t="command", id="r", device="S-1", name="set_interval", args={"seconds": -5}))
    assert reply["msg"].startswith("set_interval needs seconds > 0")


@pytest.mark.parametrize("sent", [
    frame(t="ack", id="r", alert=1), frame(t="clear", id="r", alert=1),
    frame(t="command", id="r", device="S-1", name="ping"),
])
def test_viewer_actions_are_forbidden(sent: str) -> None:
    for identity in (ANONYMOUS, DashboardIdentity(VIEWER, "wall-screen")):
        reply, calls, _ = run(sent, identity)
        assert reply["code"] == "forbidden" and "operator" in reply["msg"]
        assert calls.log == []


def test_handler_refusals_keep_their_code() -> None:
    calls = Calls()
    for error, code in ((CodedError("no_such_alert", "no alert 9"), "no_such_alert"),
                        (CodedError("alert_cleared", "alert 9 is cleared"), "alert_cleared"),
                        (StorageError("disk on fire"), "storage_unavailable"),
                        (TimeoutError(), "timeout"),
                        (RuntimeError("a bug"), "internal_error")):
        calls.fail = error
        reply, _, counted = run(frame(t="ack", id="r", alert=9), calls=calls)
        assert reply["code"] == code and counted == [code], reply
        assert "disk on fire" not in reply["msg"] and "a bug" not in reply["msg"]
    calls.fail = ActionError("device_offline", "device S-1 is not online")
    reply, _, _ = run(frame(t="command", id="r", device="S-1", name="ping"), calls=calls)
    assert (reply["code"], reply["msg"]) == ("device_offline", "device S-1 is not online")


def test_a_revoked_token_cannot_act(tmp_path: Path) -> None:
    async def body(storage: SQLiteStorage) -> None:
        auth = DashboardAuth(storage, KEY, None)
        identity = await auth.identify(await add_token(storage, KEY, "bob", OPERATOR))
        assert identity is not None
        calls = Calls()
        actions = DashboardActions(ActionHandlers(calls.ack, calls.clear, calls.command), auth)
        assert (await actions.handle(identity, frame(t="ack", id="r", alert=1)))["t"] == "ok"
        await storage.delete_dashboard_token("bob")
        reply = await actions.handle(identity, frame(t="ack", id="r", alert=1))
        assert reply["code"] == "auth_failed" and len(calls.log) == 1

    with_storage(tmp_path, body)


def test_a_new_action_is_one_more_row_of_the_table() -> None:
    seen: list[tuple[str, Any]] = []

    def check(msg: dict[str, Any]) -> str:
        note = msg.get("note")
        if not isinstance(note, str):
            raise ActionError("bad_value", "note: a string")
        return note

    async def run_note(identity: DashboardIdentity, note: str) -> dict[str, Any]:
        seen.append((identity.actor, note))
        return {"noted": note}

    calls = Calls()
    actions = DashboardActions(ActionHandlers(calls.ack, calls.clear, calls.command), None,
                               more={"note": Action(check, run_note)})
    assert asyncio.run(actions.handle(OPERATOR_ID, frame(t="note", id="n", note="hi"))) == \
        {"t": "ok", "id": "n", "noted": "hi"}
    refused = asyncio.run(actions.handle(OPERATOR_ID, frame(t="note", id="n", note=3)))
    assert refused["code"] == "bad_value"
    viewer = asyncio.run(actions.handle(DashboardIdentity(VIEWER, "wall"), frame(t="note", id="v", note="x")))
    assert viewer["code"] == "forbidden" and seen == [("dashboard:alice", "hi")]
    unknown = asyncio.run(actions.handle(OPERATOR_ID, frame(t="nope", id="u")))
    assert unknown["code"] == "unknown_type" and "note" in unknown["msg"]
