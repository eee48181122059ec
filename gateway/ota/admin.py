"""The OTA admin requests (docs/protocol.md section 10, docs/ota.md): releases and rollouts.

Every request works on storage (gateway/storage/ota_base.py), so any worker or gateway sharing the
database answers it; the rollout engine (gateway/ota/rollout.py) acts on the change at its next tick.
Failures are OtaError with a stable code (gateway/errors.py).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import OtaError
from gateway.ota.manifest import check_release_id, parse_manifest
from gateway.registry import check_device_id
from gateway.storage.base import DeviceRecord
from gateway.storage.ota_base import (
    ABORTED,
    LIVE_ROLLOUTS,
    MEMBER_STATES,
    PAUSED,
    ROLLOUT_STATES,
    RUNNING,
    DeviceReport,
    Member,
    OtaStore,
    Release,
    Rollout,
)

MAX_MEMBERS = 100_000
NO_KEY = ("this gateway has no release key yet: run `python -m gateway ota pubkey` (or the first `ota upload`) "
          "on its host to create it")


def release_dict(r: Release, manifest: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"release": r.release_id, "kind": r.kind, "version": r.version, "created": r.created_ms,
                           "size": r.size, "signed": True}
    if manifest:
        m = parse_manifest(r.manifest)
        out.update(min_runtime=m.min_runtime, files=[{"name": f.name, "size": f.size, "sha256": f.sha256}
                                                     for f in m.files], manifest=r.manifest, sig=r.sig)
    return out


def rollout_dict(r: Rollout, members: list[Member] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"rollout": r.rollout_id, "release": r.release_id, "state": r.state, "target": r.target,
                           "canary_pct": r.canary_pct, "max_failures": r.max_failures, "created": r.created_ms,
                           "updated": r.updated_ms, "reason": r.reason}
    if members is not None:
        counts = dict.fromkeys(MEMBER_STATES, 0)
        for m in members:
            counts[m.state] = counts.get(m.state, 0) + 1
        out["counts"] = {k: v for k, v in counts.items() if v}
        out["members"] = len(members)
    return out


def member_dict(m: Member) -> dict[str, Any]:
    return {"device": m.device_id, "canary": m.canary, "state": m.state, "reason": m.reason, "updated": m.updated_ms}


def report_dict(p: DeviceReport) -> dict[str, Any]:
    return {"device": p.device_id, "release": p.release_id, "state": p.state, "reason": p.reason, "done": p.done,
            "total": p.total, "updated": p.updated_ms}


def parse_share(value: object, what: str) -> tuple[int, bool]:
    """``value`` as (number, is_percent): an integer >= 0, or "P%" with P from 0 to 100."""
    if type(value) is int and value >= 0:
        return value, False
    if isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        digits = text[:-1] if percent else text
        if digits.isdigit() and (not percent or int(digits) <= 100):
            return int(digits), percent
    raise OtaError("bad_rollout", f"{what}: a number of devices (such as 3) or a share (such as 10%)")


class OtaAdmin:
    def __init__(self, store: OtaStore | None, devices: Callable[[], Awaitable[list[DeviceRecord]]],
                 clock: Callable[[], float] = time.time, unavailable: str = "",
                 pubkey: Callable[[], str | None] = lambda: None) -> None:
        """``store`` None: OTA is not available here (``unavailable`` says why); every request fails
        with ``ota_unavailable`` (but ``ota_pubkey``). ``devices()``: the registry, for groups by label.
        ``pubkey()``: the release key's public half devices are provisioned with, None before there is one."""
        self._store = store
        self._pubkey = pubkey
        self.unavailable = unavailable
        self.devices = devices
        self.clock = clock
        self.requests: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "ota_pubkey": self.pubkey,
            "ota_releases": self.releases,
            "ota_release": self.release,
            "ota_delete": self.delete,
            "ota_devices": self.reports,
            "ota_rollout_create": self.create,
            "ota_rollouts": self.rollouts,
            "ota_rollout": self.rollout,
            "ota_rollout_pause": self.pause,
            "ota_rollout_resume": self.resume,
            "ota_rollout_abort": self.abort,
        }

    @property
    def store(self) -> OtaStore:
        if self._store is None:
            raise OtaError("ota_unavailable", self.unavailable or "OTA is not available on this gateway")
        return self._store

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------ releases
    async def pubkey(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The public key for ``make flash`` (``ota_pubkey`` of the config, else the public half of
        ``<data_dir>/ota-signing.pem``); null until one exists: it is never created over the network
        (``ota upload`` or ``ota pubkey`` on the gateway's host creates it)."""
        key = self._pubkey()
        return {"pubkey": key} if key else {"pubkey": None, "msg": NO_KEY}

    async def releases(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"releases": [release_dict(r) for r in await self.store.releases()]}

    async def _release(self, msg: dict[str, Any]) -> Release:
        release_id = check_release_id(msg.get("release"))
        release = await self.store.release(release_id)
        if release is None:
            raise OtaError("no_such_release", f"release {release_id} does not exist; see ota list")
        return release

    async def release(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"release": release_dict(await self._release(msg), manifest=True)}

    async def delete(self, msg: dict[str, Any]) -> dict[str, Any]:
        release_id = check_release_id(msg.get("release"))
        if not await self.store.delete_release(release_id):
            raise OtaError("no_such_release", f"release {release_id} does not exist; see ota list")
        return {"release": release_id, "deleted": True}

    async def reports(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"devices": [report_dict(p) for p in await self.store.reports()]}

    # ------------------------------------------------------------ rollouts
    async def _members(self, msg: dict[str, Any]) -> tuple[str, list[str]]:
        group, devices = msg.get("group"), msg.get("devices")
        if (group is None) == (devices is None):
            raise OtaError("bad_rollout", "give either group (label=NAME) or devices (a list of device ids)")
        registered = {r.device_id: r for r in await self.devices()}
        if group is not None:
            if not isinstance(group, str) or not group.startswith("label=") or len(group) < 7:
                raise OtaError("bad_rollout", "group: label=NAME (the devices whose registry label is NAME)")
            label = group[len("label="):]
            chosen = sorted(d for d, r in registered.items() if r.label == label)
            if not chosen:
                raise OtaError("no_members", f"no registered device has the label {label!r}")
            return group, chosen
        if not isinstance(devices, list) or not devices or len(devices) > MAX_MEMBERS:
            raise OtaError("bad_rollout", f"devices: a list of 1 to {MAX_MEMBERS} device ids")
        ids = sorted({check_device_id(d) for d in devices})
        unknown = [d for d in ids if d not in registered]
        if unknown:
            raise OtaError("no_members", f"not registered: {', '.join(unknown[:5])}"
                           + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        return "devices", ids

    async def create(self, msg: dict[str, Any]) -> dict[str, Any]:
        release = await self._release(msg)
        target, devices = await self._members(msg)
        canary, _ = parse_share(msg.get("canary", "0%"), "canary")
        if canary > 100:
            raise OtaError("bad_rollout", "canary: a share from 0% to 100%")
        limit, percent = parse_share(msg.get("max_failures", 0), "max_failures")
        max_failures = len(devices) * limit // 100 if percent else limit
        canaries = math.ceil(len(devices) * canary / 100)
        now = self.now_ms()
        rollout = Rollout("ro-" + secrets.token_hex(4), release.release_id, RUNNING, target, canary, max_failures, now,
                          now)
        members = [Member(rollout.rollout_id, d, i < canaries, updated_ms=now) for i, d in enumerate(devices)]
        await self.store.create_rollout(rollout, members)
        return {"rollout": rollout_dict(rollout, members)}

    async def rollouts(self, msg: dict[str, Any]) -> dict[str, Any]:
        state = msg.get("state")
        if state is not None and state not in ROLLOUT_STATES:
            raise OtaError("bad_request", f"state: one of {', '.join(ROLLOUT_STATES)}")
        rows = await self.store.rollouts((state,) if state else ROLLOUT_STATES)
        return {"rollouts": [rollout_dict(r, await self.store.members(r.rollout_id)) for r in rows]}

    async def _rollout(self, msg: dict[str, Any]) -> Rollout:
        rollout_id = msg.get("rollout")
        if not isinstance(rollout_id, str) or not 0 < len(rollout_id) <= 64:
            raise OtaError("bad_request", "rollout: a rollout id (such as ro-1a2b3c4d; see ota rollout list)")
        rollout = await self.store.rollout(rollout_id)
        if rollout is None:
            raise OtaError("no_such_rollout", f"rollout {rollout_id} does not exist; see ota rollout list")
        return rollout

    async def rollout(self, msg: dict[str, Any]) -> dict[str, Any]:
        rollout = await self._rollout(msg)
        members = await self.store.members(rollout.rollout_id)
        return {"rollout": rollout_dict(rollout, members), "members": [member_dict(m) for m in members]}

    async def _move(self, msg: dict[str, Any], state: str, expect: tuple[str, ...], reason: str) -> dict[str, Any]:
        rollout = await self._rollout(msg)
        if not await self.store.set_rollout_state(rollout.rollout_id, state, reason, self.now_ms(), expect):
            now = await self.store.rollout(rollout.rollout_id)
            current = now.state if now is not None else "gone"
            raise OtaError("bad_state", f"rollout {rollout.rollout_id} is {current}; only a rollout that is "
                           f"{' or '.join(expect)} can become {state}")
        return await self.rollout(msg)

    async def pause(self, msg: dict[str, Any]) -> dict[str, Any]:
        """No new offers; devices already updating go on."""
        return await self._move(msg, PAUSED, (RUNNING,), "paused by the operator")

    async def resume(self, msg: dict[str, Any]) -> dict[str, Any]:
        return await self._move(msg, RUNNING, (PAUSED,), "")

    async def abort(self, msg: dict[str, Any]) -> dict[str, Any]:
        """No new offers, and the release is no longer served to its devices (their downloads fail)."""
        return await self._move(msg, ABORTED, LIVE_ROLLOUTS, "aborted by the operator")
