"""Rollouts (docs/ota.md): a release offered to a set of devices, canary first, stopped at a failure limit.

Everything a rollout is lives in storage (gateway/storage/ota_base.py), so a restarted gateway goes
on where it was, and the admin requests of any worker or gateway sharing the database change it.
One engine drives all rollouts: the gateway's, or with workers worker 1's (the alert owner,
gateway/alerts/relay.py). Every ``tick_s`` (``tick``), for each running or paused rollout:

1. more failed or rolled back members than ``max_failures``: the rollout stops (``stopped``) and one
   alert is raised (the compare-and-set of the state makes it one, also across gateways);
2. every member final (good, failed, rolled back): ``done``;
3. running: the release's signature and files are checked (once per release and engine; a release
   that does not verify stops the rollout: it is never offered), then pending members that are
   online get the offer, the ``ota`` command on the one command path (gateway/device_commands.py):
   the canary members first, the others only once every canary member is ``good``. An offline
   member is offered after it connects, at the next tick; a member whose offer was not delivered
   or was answered ``busy`` waits ``retry_s`` before the next one; one delivered but unanswered
   stays ``offered`` (its device may be downloading) until twice ``offer_timeout_s`` have passed.

The offer's result moves the member to ``downloading`` (or ``good``: already running it) or to
``failed`` with the device's code; the device's own ``ota`` frames move it on (gateway/ota/serve.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import BusError, CommandError, DeviceOffline, OtaError, StorageError, TooManyCommands
from gateway.logs import log
from gateway.ota.manifest import parse_manifest, signed, verify
from gateway.storage.ota_base import (
    DONE,
    DOWNLOADING,
    FAILED,
    FAILURE_STATES,
    FINAL_STATES,
    GOOD,
    OFFERED,
    PAUSED,
    PENDING,
    RUNNING,
    STOPPED,
    Member,
    OtaStore,
    Release,
    Rollout,
)
from gateway.supervisor import spawn

Offer = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (device, args) -> the command's result
RETRY_S = 10.0
VERIFY_CHUNK = 1 << 20


class RolloutEngine:
    def __init__(self, store: OtaStore, offer: Offer, online: Callable[[str], bool],
                 alert: Callable[[Rollout, str], None], pubkey: Callable[[], str | None],
                 clock: Callable[[], float] = time.time, tick_s: float = 2.0, offer_timeout_s: float = 30.0,
                 retry_s: float = RETRY_S) -> None:
        """``offer(device, args)``: send the ``ota`` command, return its result (raises as Commands.run).
        ``alert(rollout, reason)``: the rollout stopped at its failure limit. ``pubkey()``: the key
        releases must verify with (None: no key known, nothing is offered)."""
        self.store = store
        self.offer = offer
        self.online = online
        self.alert = alert
        self.pubkey = pubkey
        self.clock = clock
        self.tick_s = tick_s
        self.offer_timeout_ms = int(offer_timeout_s * 1000)
        self.retry_ms = int(retry_s * 1000)
        self.inflight: dict[str, asyncio.Task[None]] = {}  # device -> its offer
        self.next_try: dict[str, int] = {}  # device -> when its next offer may go (ms)
        self.verified: dict[str, str | None] = {}  # release id -> None (good) or what is wrong
        self.offers = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except StorageError as err:  # the next tick tries again
                log("ota_rollouts_not_driven", logging.WARNING, error=str(err)[:200])
            await asyncio.sleep(self.tick_s)

    async def close(self) -> None:
        tasks = list(self.inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def tick(self) -> None:
        for rollout in await self.store.rollouts((RUNNING, PAUSED)):
            await self.drive(rollout)

    async def drive(self, rollout: Rollout) -> None:
        """One step of one rollout (see the module docstring)."""
        store, now = self.store, self.now_ms()
        members = await store.members(rollout.rollout_id)
        failed = sum(1 for m in members if m.state in FAILURE_STATES)
        if failed > rollout.max_failures:
            reason = (f"{failed} of {len(members)} devices failed or rolled back, more than the limit of "
                      f"{rollout.max_failures}")
            await self._stop(rollout, reason, now)
            return
        if all(m.state in FINAL_STATES for m in members):
            good = sum(1 for m in members if m.state == GOOD)
            if await store.set_rollout_state(rollout.rollout_id, DONE, f"{good} good, {failed} failed", now,
                                             (RUNNING, PAUSED)):
                log("ota_rollout_done", rollout=rollout.rollout_id, release=rollout.release_id, good=good,
                    failed=failed)
            return
        lost = now - 2 * self.offer_timeout_ms
        for m in members:  # an offer lost with its engine (a restart): tried again
            if m.state == OFFERED and m.device_id not in self.inflight and m.updated_ms < lost:
                await store.set_member(rollout.rollout_id, m.device_id, PENDING, "no answer to the offer", now,
                                       (OFFERED,))
        if rollout.state != RUNNING:
            return
        release = await store.release(rollout.release_id)
        problem = "the release was deleted" if release is None else await self._verify(release)
        if problem is not None or release is None:
            await self._stop(rollout, f"release {rollout.release_id} is not offered: {problem}", now)
            return
        canary = [m for m in members if m.canary]
        phase = members if all(m.state == GOOD for m in canary) else canary
        for m in phase:
            device = m.device_id
            if (m.state == PENDING and device not in self.inflight and self.next_try.get(device, 0) <= now
                    and self.online(device)):
                self.inflight[device] = spawn(self._offer(rollout, release, m), "ota offer")

    async def _stop(self, rollout: Rollout, reason: str, now: int) -> None:
        if await self.store.set_rollout_state(rollout.rollout_id, STOPPED, reason, now, (RUNNING, PAUSED)):
            log("ota_rollout_stopped", logging.WARNING, rollout=rollout.rollout_id, release=rollout.release_id,
                reason=reason)
            self.alert(rollout, reason)

    async def _verify(self, release: Release) -> str | None:
        """None if the release's signature verifies and every file matches its manifest; else what is wrong."""
        if release.release_id in self.verified:
            return self.verified[release.release_id]
        key = self.pubkey()
        if key is None:
            return "no public key to verify it with (set ota_pubkey, or upload with this gateway's data_dir)"
        problem = None
        if not signed(release.sig):
            problem = "it is not signed"
        elif not verify(key, release.manifest, release.sig):
            problem = "its signature does not verify with the gateway's OTA public key"
        else:
            try:
                manifest = parse_manifest(release.manifest)
            except OtaError as err:
                problem = f"its manifest is invalid ({err})"
            else:
                for entry in manifest.files:
                    digest = await self._digest(release.release_id, entry.name, entry.size)
                    if digest != entry.sha256:
                        problem = f"its file {entry.name} does not match the manifest's size and SHA-256"
                        break
        self.verified[release.release_id] = problem
        if problem is not None:
            log("ota_release_refused", logging.ERROR, release=release.release_id, reason=problem)
        return problem

    async def _digest(self, release_id: str, name: str, size: int) -> str | None:
        digest = hashlib.sha256()
        off = 0
        while True:
            chunk = await self.store.chunk(release_id, name, off, VERIFY_CHUNK)
            if chunk is None or chunk[1] != size:
                return None
            digest.update(chunk[0])
            off += len(chunk[0])
            if not chunk[0] or off >= size:
                return digest.hexdigest()

    async def _offer(self, rollout: Rollout, release: Release, member: Member) -> None:
        store, device, rid = self.store, member.device_id, rollout.rollout_id
        try:
            if not await store.set_member(rid, device, OFFERED, "", self.now_ms(), (PENDING,)):
                return
            self.offers += 1
            try:
                result = await self.offer(device, {"manifest": release.manifest, "sig": release.sig})
            except TimeoutError:  # delivered, unanswered: it may be downloading; its reports move it on,
                return  # else it is offered again once the offer is older than twice the timeout
            except (DeviceOffline, CommandError, BusError, TooManyCommands) as err:
                code = getattr(err, "code", "not_sent")
                self.next_try[device] = self.now_ms() + self.retry_ms
                await store.set_member(rid, device, PENDING, str(code), self.now_ms(), (OFFERED,))
                return
            data = result.get("data") if isinstance(result.get("data"), dict) else {}
            assert isinstance(data, dict)
            if result.get("ok") is True:
                state = GOOD if data.get("state") == GOOD else DOWNLOADING
                await store.set_member(rid, device, state, "", self.now_ms(), (OFFERED,))
                return
            code = str(data.get("code") or "refused")[:32]
            if code == "busy":  # another update runs on the device: offered again later
                self.next_try[device] = self.now_ms() + self.retry_ms
                await store.set_member(rid, device, PENDING, code, self.now_ms(), (OFFERED,))
                return
            await store.set_member(rid, device, FAILED, code, self.now_ms(), (OFFERED,))
            log("ota_offer_refused", logging.WARNING, rollout=rid, device=device, code=code)
        except StorageError as err:
            log("ota_offer_not_recorded", logging.WARNING, rollout=rid, device=device, error=str(err)[:200])
        finally:
            self.inflight.pop(device, None)
