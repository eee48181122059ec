"""A/B app slots (docs/ota.md): which app boots and its trial (the updater, in the app
slot, writes the switch and the mark of a good trial through write()). NEVER updated over the
air: boot.py and this module are the part of the board that must always work, so they stay as
`make flash` wrote them (at the filesystem's root, outside the slots).

- ``/app_a/`` and ``/app_b/`` each hold one whole app (its .mpy files and protocol/).
- ``/app_cur`` (JSON ``{"slot": "a", "release": "esp32-0.1.0"}``) names the good slot. Missing:
  a board flashed before slots existed, whose app is at the root ("" below).
- ``/app_try`` (JSON ``{"slot": "b", "release": ..., "boots": N, "why": ...}``) names the slot on
  trial; boot.py counts its boots and falls back after MAX_BOOTS that did not end in ``good``.
- ``/ota_result``: what boot.py decided at a fallback (release, rolled_back, reason), for the
  app to report to the gateway once online.

Every pointer is written to a temporary file and renamed over the old one: LittleFS renames are
atomic, so a power cut leaves the old pointer or the new one, never half of one.
"""

import json
import os

CUR = "/app_cur"
TRY = "/app_try"
RESULT = "/ota_result"
DOWNLOAD = "/ota_dl"  # a download in progress (the updater's saved offer), kept across a power cut
MAX_BOOTS = 3  # trial boots before the fallback
SLOTS = ("a", "b")

running = None  # the slot boot.py chose ("" for an app at the root)
trial = None  # the /app_try record when the running slot is on trial


def read(path):
    """The JSON object in ``path``, or None (missing, or not one: a pointer is never half-written)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if type(value) is dict else None


def write(path, value):
    """Replace ``path`` with ``value`` atomically: a temporary file, then os.rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.rename(tmp, path)


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def pending():
    """True when the updater has work at boot: a trial, a fallback to report, a download to resume.
    (Otherwise the app does not load it, nor protocol.ota: their heap is spent only for an update.)"""
    return trial is not None or exists(RESULT) or exists(DOWNLOAD)


def running_version(default):
    """The version of the release this boot runs (its slot's record), else ``default``."""
    record = trial if trial is not None else current()
    release = record.get("release")
    if type(release) is str and release.startswith("esp32-"):
        return release[6:]
    return default


def current():
    """The good slot's record, {"slot": "a"|"b"|"", "release": ...}."""
    cur = read(CUR)
    if cur is None or cur.get("slot") not in SLOTS:
        return {"slot": "", "release": None}
    return cur


def directory(slot):
    return "/app_" + slot if slot else ""


def choose():
    """At boot: the slot to run. Counts a trial boot, or falls back after MAX_BOOTS of them."""
    global running, trial
    cur = current()
    attempt = read(TRY)
    slot = cur["slot"]
    trial = None
    if attempt is not None:
        if attempt.get("slot") not in SLOTS or attempt.get("slot") == slot:
            remove(TRY)  # marked good, and the power went before the trial record was removed
        elif type(attempt.get("boots")) is not int or attempt["boots"] >= MAX_BOOTS:
            write(RESULT, {"release": attempt.get("release"), "state": "rolled_back",
                           "reason": attempt.get("why") or "crashed"})
            remove(TRY)
            print("ota: trial of", attempt.get("release"), "failed", MAX_BOOTS, "boots: back to slot", slot or "/")
        else:
            attempt["boots"] += 1
            attempt["why"] = None
            write(TRY, attempt)
            trial = attempt
            slot = attempt["slot"]
            print("ota: trial boot", attempt["boots"], "of", MAX_BOOTS, "for", attempt.get("release"))
    running = slot
    return slot


def activate(slot):
    """Make ``slot``'s modules importable first."""
    import sys

    path = directory(slot)
    if path and path not in sys.path:
        sys.path.insert(0, path)
