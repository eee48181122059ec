"""The dashboards' view model (gateway/dashboard/view.py) on its own: frames in, deltas out, to
viewers that are plain objects (no socket, no stream)."""

from __future__ import annotations

import json
from typing import Any

from gateway.dashboard.roles import ANONYMOUS, OPERATOR, VIEWER, DashboardIdentity
from gateway.dashboard.view import Hub


class Viewer:
    """A viewer that keeps what it is offered."""

    def __init__(self, identity: DashboardIdentity = ANONYMOUS) -> None:
        self.identity = identity
        self.frames: list[dict[str, Any]] = []
        self.resynced = 0
        self.closed: tuple[int, str] | None = None

    def offer(self, frame: str) -> None:
        self.frames.append(json.loads(frame))

    def resync(self) -> None:
        self.resynced += 1

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def make_hub() -> Hub:
    return Hub(250.0, 8, json.dumps, clock=lambda: 1_700_000_000.0)


def test_device_events_become_one_delta_per_flush() -> None:
    hub = make_hub()
    viewer = Viewer()
    hub.clients.add(viewer)
    hub.online("S-1")
    hub.reading("S-1", {"temperature": 21.5}, 1_699_999_999_000)
    hub.status("S-1", {"rssi": -60})
    hub.device_error("S-2", "bad_value", "temperature out of range")
    hub.flush()
    hub.flush()  # nothing changed since: no second delta
    assert len(viewer.frames) == 1
    delta = viewer.frames[0]
    assert delta["t"] == "update" and set(delta["devices"]) == {"S-1", "S-2"}
    assert delta["devices"]["S-1"]["latest"] == {"temperature": [21.5, 1_699_999_999_000]}
    assert delta["devices"]["S-2"]["last_error"]["code"] == "bad_value"
    assert [e["kind"] for e in delta["events"]] == ["online"]
    snapshot = json.loads(hub.snapshot_frame())
    assert snapshot["t"] == "snapshot" and {d["id"] for d in snapshot["devices"]} == {"S-1", "S-2"}


def test_own_changes_go_to_the_peers_and_peer_changes_are_shown_not_passed_on() -> None:
    hub = make_hub()
    published: list[dict[str, Any]] = []
    hub.share(published.append)
    viewer = Viewer()
    hub.clients.add(viewer)
    hub.remote_presence("P-1", "gw-2", True)
    hub.remote_update({"P-1": {"latest": {"humidity": [40.0, 5]}}}, [])
    hub.flush()
    assert published == []  # only peers' changes: nothing to publish
    assert viewer.frames[0]["devices"]["P-1"]["latest"] == {"humidity": [40.0, 5]}
    hub.offline("S-1")
    hub.flush()
    assert [list(update["devices"]) for update in published] == [["S-1"]]


def test_resync_and_revoked_tokens_reach_the_viewers() -> None:
    hub = make_hub()
    keep = Viewer(DashboardIdentity(VIEWER, "wall", b"\x01" * 32))
    gone = Viewer(DashboardIdentity(OPERATOR, "bob", b"\x02" * 32))
    hub.clients.update({keep, gone})
    hub.resync_all()
    assert (keep.resynced, gone.resynced) == (1, 1)
    assert hub.close_revoked({("wall", VIEWER, b"\x01" * 32)}) == 1
    assert gone.closed is not None and gone.closed[0] == 4001 and keep.closed is None
    assert hub.clients == {keep}
