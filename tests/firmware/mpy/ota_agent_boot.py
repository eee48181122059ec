"""firmware/ota_agent.py and slots.py at boot, under MicroPython (run by test_ota_micropython.py with
the sources deployed and /lib/ota_agent_vectors.json): what a boot finds on flash after each kind
of power cut or fallback, and what the updater makes of it."""

import binascii
import json
import os

import slots
from mpytest import run
from ota_agent import OtaAgent, _mkdirs, slot_path

with open("/lib/ota_agent_vectors.json") as f:
    V = json.load(f)
FILES = {}
for name in V["files"]:
    FILES[name] = binascii.a2b_base64(V["files"][name].encode())
CFG = {"ota_pubkey": V["pub"], "ota_trial_s": 300}


def wipe(path="/"):
    for entry in list(os.ilistdir(path)):
        child = path.rstrip("/") + "/" + entry[0]
        if entry[0] in ("lib", "tmp", "home", "dev", "proc", "protocol") and path == "/":
            continue
        if entry[0].endswith(".py"):
            continue
        if entry[1] == 0x4000:
            wipe(child)
            os.rmdir(child)
        else:
            os.remove(child)


def put(path, data):
    _mkdirs(path)
    with open(path, "wb") as f:
        f.write(data)


def fresh(cur="a", trial=None, download=None, result=None):
    wipe()
    slots.write(slots.CUR, {"slot": cur, "release": "esp32-0.1.0"})
    if trial is not None:
        slots.write(slots.TRY, trial)
    if download is not None:
        slots.write(slots.DOWNLOAD, download)
    if result is not None:
        slots.write(slots.RESULT, result)
    return slots.choose()  # what boot.py does first


def test_a_trial_boot_drops_a_download_record_left_by_a_power_cut_after_the_switch():
    assert fresh(trial={"slot": "b", "release": "esp32-0.2.0", "boots": 0, "why": None},
                 download={"slot": "b", "snap": V["snap"]}) == "b"
    assert slots.trial["boots"] == 1
    agent = OtaAgent(CFG, "0.2.0", 0)
    assert agent.core.stage == "trial" and agent.core.release == "esp32-0.2.0"
    assert not slots.exists(slots.DOWNLOAD)


def test_a_power_cut_mid_download_resumes_from_the_bytes_on_flash():
    assert fresh(download={"slot": "b", "snap": V["snap"]}) == "a"
    put(slot_path("b", "app.mpy"), FILES["app.mpy"][:700])
    assert slots.trial is None and slots.pending()
    agent = OtaAgent(CFG, "0.1.0", 0)
    assert agent.core.stage == "downloading", agent.core.stage
    assert agent.core.position() == ("app.mpy", 700), agent.core.position()
    frame = json.loads(agent.core.next_frame())
    assert frame["state"] == "downloading" and frame["done"] == 700


def test_a_finished_file_and_a_partial_one_resume_in_the_second():
    fresh(download={"slot": "b", "snap": V["snap"]})
    put(slot_path("b", "app.mpy"), FILES["app.mpy"])
    put(slot_path("b", "protocol.wire.mpy"), FILES["protocol.wire.mpy"][:3])
    agent = OtaAgent(CFG, "0.1.0", 0)
    assert agent.core.position() == ("protocol.wire.mpy", 3), agent.core.position()
    assert slot_path("b", "protocol.wire.mpy") == "/app_b/protocol/wire.mpy"


def test_bytes_on_flash_that_do_not_match_fail_and_are_wiped():
    fresh(download={"slot": "b", "snap": V["snap"]})
    put(slot_path("b", "app.mpy"), bytes(len(FILES["app.mpy"])))
    agent = OtaAgent(CFG, "0.1.0", 0)
    assert (agent.core.stage, agent.core.reason) == ("failed", "bad_hash")
    assert not slots.exists(slots.DOWNLOAD) and not slots.exists("/app_b")


def test_a_tampered_download_record_is_dropped():
    snap = dict(V["snap"])
    snap["manifest"] = snap["manifest"].replace("0.2.0", "0.2.1")
    fresh(download={"slot": "b", "snap": snap})
    agent = OtaAgent(CFG, "0.1.0", 0)
    assert agent.core.stage is None and not slots.exists(slots.DOWNLOAD)


def test_three_failed_trial_boots_fall_back_and_the_old_app_reports_it_once():
    assert fresh(trial={"slot": "b", "release": "esp32-0.2.0", "boots": 3, "why": "no_gateway"}) == "a"
    assert slots.trial is None and not slots.exists(slots.TRY)
    agent = OtaAgent(CFG, "0.1.0", 0)
    assert (agent.core.stage, agent.core.reason) == ("rolled_back", "no_gateway")
    agent.sent()
    assert slots.exists(slots.RESULT)  # not sent yet: kept
    frame = json.loads(agent.core.next_frame())
    assert frame == {"t": "ota", "release": "esp32-0.2.0", "state": "rolled_back", "reason": "no_gateway"}, frame
    agent.sent()
    assert not slots.exists(slots.RESULT)


def test_a_good_mark_cut_short_is_finished_by_boot():
    assert fresh(cur="b", trial={"slot": "b", "release": "esp32-0.2.0", "boots": 1, "why": None}) == "b"
    assert slots.trial is None and not slots.exists(slots.TRY)
    assert slots.running_version("0.0.0") == "0.1.0"  # the record names what make flash wrote here


run(globals())
