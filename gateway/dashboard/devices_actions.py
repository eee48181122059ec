"""The console's device actions (operators, over /v1/dashboard; docs/protocol.md section 9).

``device_add``, ``device_label``, ``device_disable``, ``device_enable``, ``device_rotate`` and
``device_delete``: each checks its frame, then runs the admin API's request of the same change
(gateway/admin.py ``register``, ``label``, ``disable``, ``enable``, ``rotate``, ``delete``: one
registry path, with its logs and its notices to the other instances), records who did it in the
``dashboard_device_change`` log event (the token's name, never the device's token), and refreshes
the dashboards' device list at once. A new or rotated token is in the reply only, shown once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.dashboard.actions import E_NOT_FOUND, ActionError, ExtraAction
from gateway.errors import RegistryError
from gateway.logs import log
from gateway.registry import MAX_LABEL
from gateway.storage.base import DeviceRecord
from protocol import wire

E_EXISTS = "already_registered"
AdminRequest = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# action -> (the admin request it runs, whether the device must exist)
ACTIONS: dict[str, tuple[str, bool]] = {
    "device_add": ("register", False),
    "device_label": ("label", True),
    "device_disable": ("disable", True),
    "device_enable": ("enable", True),
    "device_rotate": ("rotate", True),
    "device_delete": ("delete", True),
}


def _device(msg: dict[str, Any]) -> str:
    device = msg.get("device")
    if not isinstance(device, str) or not wire.valid_device_id(device):
        raise ActionError(wire.E_BAD_FRAME, "device: a device id (1-64 of A-Z a-z 0-9 _ - . :)")
    return device


def _label(msg: dict[str, Any], required: bool) -> str:
    label = msg.get("label", None if required else "")
    if not isinstance(label, str):
        raise ActionError(wire.E_BAD_FRAME, "label: a text (may be empty)")
    if len(label) > MAX_LABEL or any(ord(c) < 32 for c in label):
        raise ActionError(wire.E_BAD_VALUE, f"label: at most {MAX_LABEL} characters, on one line")
    return label


class DeviceActions:
    def __init__(self, admin: dict[str, AdminRequest], get_device: Callable[[str], Awaitable[DeviceRecord | None]],
                 changed: Callable[[], Awaitable[None]]) -> None:
        """``admin``: the admin API's request table; ``get_device``: the registry's record (storage);
        ``changed``: refreshes the dashboards' device list (DashboardSync.sync)."""
        self.admin = admin
        self.get_device = get_device
        self.changed = changed

    def table(self) -> dict[str, ExtraAction]:
        def bind(action: str) -> ExtraAction:
            return lambda msg, actor: self.run(action, msg, actor)

        return {action: bind(action) for action in ACTIONS}

    async def run(self, action: str, msg: dict[str, Any], actor: str) -> dict[str, Any]:
        request, must_exist = ACTIONS[action]
        device = _device(msg)
        frame: dict[str, Any] = {"t": request, "device_id": device}
        if action in ("device_add", "device_label"):
            frame["label"] = _label(msg, required=action == "device_label")
        exists = await self.get_device(device) is not None
        if must_exist and not exists:
            raise ActionError(E_NOT_FOUND, f"no device {device} is registered")
        if not must_exist and exists:
            raise ActionError(E_EXISTS, f"device {device} is already registered; rotate its token to issue a new one")
        try:
            reply = await self.admin[request](frame)
        except RegistryError as err:  # a race with another operator (added or deleted meanwhile)
            raise ActionError(E_NOT_FOUND if must_exist else E_EXISTS, str(err)[:300]) from None
        except ValueError as err:
            raise ActionError(wire.E_BAD_VALUE, str(err)[:300]) from None
        log("dashboard_device_change", actor=actor, device=device, change=request)
        await self.changed()
        token = reply.get("token")
        return {"device": device, "change": request, **({"token": token} if token else {}),
                **{k: v for k, v in reply.items() if k in ("enabled", "label")},
                **({"deleted": True} if reply.get("removed") else {})}
