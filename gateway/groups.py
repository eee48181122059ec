"""Device labels and groups: which devices a group command (or any fleet operation) is for.

A device carries labels, ``key=value`` pairs, or a bare ``key`` (a tag: its value is ""), set
with ``python -m gateway devices label DEVICE key=value ...`` or the admin ``label`` request
(docs/protocol.md section 10). A key is 1-32 characters from a-z A-Z 0-9 _ . - (starting with a
letter or digit, not ending with -), a value at most 64 of the same, at most ``MAX_LABELS`` labels per device.
They are not the free-text ``label`` (the device's display name, as in Home Assistant).

A group is written as one selector:

- ``label=KEY``: the devices that carry the label KEY (whatever its value);
- ``label=KEY=VALUE``: the devices whose label KEY is VALUE;
- several terms joined by ``,`` (``label=site=greenhouse,floor=1``): the devices that match all;
- ``devices=ID,ID,...``: these devices (each must be registered).

Members come in device id order (the registry's), each once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import GroupError
from gateway.storage.base import DeviceRecord
from protocol import wire

MAX_LABELS = 16
MAX_GROUP_DEVICES = 5_000
_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,30}[A-Za-z0-9_.])?")  # never ends with - (KEY- drops KEY)
_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,64}")
GROUP_HINT = "a group is label=KEY, label=KEY=VALUE (terms joined by ,) or devices=ID,ID,..."


def check_label(key: object, value: object) -> tuple[str, str]:
    """(key, value) if both are valid, else GroupError saying what a label looks like."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        shown = repr(key)[:40]
        raise GroupError("bad_label", f"label key {shown}: 1-32 characters from a-z A-Z 0-9 _ . - "
                         "(starting with a letter or digit, not ending with -)")
    if not isinstance(value, str) or not _VALUE.fullmatch(value):
        raise GroupError("bad_label", f"label {key}: value {str(value)[:40]!r}: at most 64 characters "
                         "from a-z A-Z 0-9 _ . -")
    return key, value


def parse_label_changes(items: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """The CLI's words: ``key=value`` or ``key`` (a tag) to set, ``key-`` to drop; (set, remove)."""
    changes: dict[str, str] = {}
    remove: list[str] = []
    for item in items:
        if "=" not in item and item.endswith("-"):
            remove.append(check_label(item[:-1], "")[0])
        else:
            key, _sep, value = item.partition("=")
            changes.update([check_label(key, value)])
    return changes, remove


def changed_labels(labels: dict[str, str], set_: dict[str, str], remove: Iterable[str]) -> dict[str, str]:
    """``labels`` with ``remove`` taken out and ``set_`` put in (checked); GroupError beyond MAX_LABELS."""
    dropped = {check_label(key, "")[0] for key in remove}
    result = {k: v for k, v in labels.items() if k not in dropped}
    for key, value in set_.items():
        check_label(key, value)
        result[key] = value
    if len(result) > MAX_LABELS:
        raise GroupError("bad_label", f"labels: at most {MAX_LABELS} per device")
    return dict(sorted(result.items()))


@dataclass(frozen=True, slots=True)
class Group:
    """A parsed selector: label terms (key, value or None for any value), or a list of device ids."""

    text: str
    terms: tuple[tuple[str, str | None], ...] = ()
    devices: tuple[str, ...] = ()

    def matches(self, record: DeviceRecord) -> bool:
        if self.devices:
            return record.device_id in self.devices
        labels = record.labels
        return all(key in labels and (value is None or labels[key] == value) for key, value in self.terms)


def parse_group(text: object) -> Group:
    """The selector ``text`` (see the module docstring); GroupError naming what is wrong."""
    if not isinstance(text, str) or not text:
        raise GroupError("bad_group", f"group: {GROUP_HINT}")
    kind, sep, rest = text.partition("=")
    if not sep or not rest:
        raise GroupError("bad_group", f"group {text[:80]!r}: {GROUP_HINT}")
    items = rest.split(",")
    if kind == "devices":
        ids: list[str] = []
        for item in items:
            if not wire.valid_device_id(item):
                raise GroupError("bad_group", f"group {text[:80]!r}: {item[:64]!r} is not a device id")
            if item not in ids:
                ids.append(item)
        if len(ids) > MAX_GROUP_DEVICES:
            raise GroupError("bad_group", f"group: at most {MAX_GROUP_DEVICES} devices")
        return Group(text, devices=tuple(ids))
    if kind == "label":
        terms: list[tuple[str, str | None]] = []
        for item in items:
            key, has_value, value = item.partition("=")
            check_label(key, value)
            terms.append((key, value if has_value else None))
        return Group(text, terms=tuple(terms))
    raise GroupError("bad_group", f"group {text[:80]!r}: {GROUP_HINT}")


def device_group(device_ids: Iterable[object]) -> Group:
    """The group of a list of ids (the admin request's ``devices``, the CLI's repeated ``--device``)."""
    ids = list(device_ids)
    if not ids or not all(isinstance(i, str) for i in ids):
        raise GroupError("bad_group", "devices: a non-empty list of device ids")
    return parse_group("devices=" + ",".join(str(i) for i in ids))


def members(group: Group, records: list[DeviceRecord]) -> list[DeviceRecord]:
    """The registered devices of ``group``, by id. GroupError when a listed
    id is not registered (``not_found``) or no device matches (``empty_group``): a typo must not look
    like success."""
    found = [r for r in records if group.matches(r)]
    if group.devices:
        known = {r.device_id for r in found}
        unknown = [d for d in group.devices if d not in known]
        if unknown:
            raise GroupError("not_found", f"group {group.text[:80]!r}: not registered: {', '.join(unknown[:10])}"
                                + (" ..." if len(unknown) > 10 else ""))
    if len(found) > MAX_GROUP_DEVICES:
        raise GroupError("bad_group", f"group {group.text[:80]!r} matches {len(found)} devices, more than "
                         f"{MAX_GROUP_DEVICES}: narrow it with another label term")
    if not found:
        raise GroupError("empty_group", f"group {group.text[:80]!r}: no registered device matches; "
                            "`devices list` shows each device's labels")
    return sorted(found, key=lambda r: r.device_id)
