"""What OTA keeps in storage (docs/ota.md): releases with their files, rollouts with their members,
and each device's latest update state. A narrow protocol of its own, beside ``Storage``.

Backends: ``sqlite_ota.SQLiteOta`` and ``postgresql_ota.PostgresOta``, each on its storage's
connections; ``ota_backends.ota_store(storage)`` picks the one for a storage (the ``none`` backend has none:
OtaError ``ota_unavailable``). tests/gateway/storage/test_ota.py is the conformance suite.

The contract, beyond each method's docstring:

- **Releases are immutable.** ``put_release`` stores the manifest text, its signature and every
  file in one transaction, or nothing; a release id is never stored twice. ``chunk`` reads a byte
  range of one file without loading the whole file.
- **Member states move by compare-and-set.** ``set_member`` and ``set_rollout_state`` change a row
  only when its current state is one of ``expect``, so the rollout engine, device reports and
  operators (on any worker or gateway sharing the database) never overwrite each other's step.
- **Device reports** (``record_report``) keep the latest per device and, in the same transaction,
  move the device's member rows of live rollouts of that release (offered or further, not yet
  final) to the reported state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Rollout states.
RUNNING = "running"
PAUSED = "paused"
STOPPED = "stopped"  # by itself, at its failure limit
ABORTED = "aborted"
DONE = "done"
ROLLOUT_STATES = (RUNNING, PAUSED, STOPPED, ABORTED, DONE)
LIVE_ROLLOUTS = (RUNNING, PAUSED, STOPPED)  # their offered members may still download

# Member states: pending until offered; then the device's reported states (OTA-CONTRACT.md).
PENDING = "pending"
OFFERED = "offered"  # the offer is on its way; the device's answer moves it on
DOWNLOADING = "downloading"
VERIFYING = "verifying"
TRIAL = "trial"
GOOD = "good"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
MEMBER_STATES = (PENDING, OFFERED, DOWNLOADING, VERIFYING, TRIAL, GOOD, ROLLED_BACK, FAILED)
REPORTED_STATES = (DOWNLOADING, VERIFYING, TRIAL, GOOD, ROLLED_BACK, FAILED)
FINAL_STATES = (GOOD, ROLLED_BACK, FAILED)
FAILURE_STATES = (ROLLED_BACK, FAILED)
IN_PROGRESS = (OFFERED, DOWNLOADING, VERIFYING, TRIAL)


@dataclass(slots=True, frozen=True)
class Release:
    """A signed release (its files are stored beside it; ``size`` is their total in bytes)."""

    release_id: str
    kind: str
    version: str
    manifest: str  # the exact signed text
    sig: str  # 128 hex
    created_ms: int
    size: int


@dataclass(slots=True)
class Rollout:
    rollout_id: str
    release_id: str
    state: str
    target: str  # what the operator asked for: "label=X" or "devices"
    canary_pct: int  # 0..100
    max_failures: int  # failed or rolled back members tolerated; one more stops the rollout
    created_ms: int
    updated_ms: int
    reason: str = ""


@dataclass(slots=True)
class Member:
    rollout_id: str
    device_id: str
    canary: bool
    state: str = PENDING
    reason: str = ""
    updated_ms: int = 0


@dataclass(slots=True, frozen=True)
class DeviceReport:
    """A device's latest ``ota`` frame."""

    device_id: str
    release_id: str
    state: str
    reason: str
    done: int | None
    total: int | None
    updated_ms: int


class OtaStore(Protocol):
    async def put_release(self, release: Release, files: dict[str, bytes]) -> bool:
        """Store the release and its files (one transaction); False if its id exists already."""

    async def releases(self) -> list[Release]:
        """Every release, newest first."""

    async def release(self, release_id: str) -> Release | None: ...

    async def delete_release(self, release_id: str) -> bool:
        """Delete the release and its files; False if it did not exist. OtaError ``release_in_use``
        while a live rollout (running, paused, stopped) uses it."""

    async def chunk(self, release_id: str, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        """Up to ``length`` bytes of the file from ``offset``, and the file's size; None: no such file."""

    async def create_rollout(self, rollout: Rollout, members: list[Member]) -> None: ...

    async def rollouts(self, states: tuple[str, ...] = ROLLOUT_STATES) -> list[Rollout]:
        """The rollouts in one of ``states``, newest first."""

    async def rollout(self, rollout_id: str) -> Rollout | None: ...

    async def members(self, rollout_id: str) -> list[Member]:
        """The rollout's members, by device id."""

    async def set_rollout_state(self, rollout_id: str, state: str, reason: str, now_ms: int,
                                expect: tuple[str, ...]) -> bool:
        """Set the state if it is one of ``expect`` now; whether it was set."""

    async def set_member(self, rollout_id: str, device_id: str, state: str, reason: str, now_ms: int,
                         expect: tuple[str, ...]) -> bool:
        """Set the member's state if it is one of ``expect`` now; whether it was set."""

    async def offered(self, device_id: str, release_id: str) -> bool:
        """Whether the release was offered to the device by a live rollout (the device may download it)."""

    async def record_report(self, report: DeviceReport) -> int:
        """Keep the device's latest report and move its live members of that release; how many moved."""

    async def reports(self) -> list[DeviceReport]:
        """Every device's latest report, by device id."""

