"""The whole firmware main loop under CPython against a real gateway process.

Only hardware is simulated (simulator/micropython_standins: machine, network,
dht, ntptime, utime; the flash is a temp dir). Simulated time runs faster than
the host clock where the sensor's timing (DHT22: one read per 2 s) would make
a test slow; assertions use the device's own timestamps, never host timing.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.simboard import SimBoard, wait_for
from tests.helpers.gateway import GatewayProcess

pytestmark = pytest.mark.timeout(60)
DEVICE = "ESP-SIM-1"


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path, cbor=True)  # the firmware offers edgewire.v1.cbor: binary data frames
    gateway.start()
    try:
        yield gateway
    finally:
        try:
            gateway.stop()
        finally:
            gateway.kill()


def board_for(gw: GatewayProcess, tmp_path: Path, speed: float = 4.0, sim: dict[str, Any] | None = None,
              **config: Any) -> SimBoard:
    token = gw.register(DEVICE)
    cfg: dict[str, Any] = {"gateway_url": gw.device_url, "device_id": DEVICE, "token": token,
                           "interval_s": 2, "min_interval_s": 2, "max_interval_s": 4}
    cfg.update(config)
    return SimBoard(tmp_path, cfg, sim, speed=speed)


def rows(gw: GatewayProcess) -> list[dict[str, Any]]:
    try:
        found = gw.query("SELECT seq, time_ms, boot, device_ts, uptime_ms, quality, metrics FROM readings "
                         "WHERE device_id=? ORDER BY seq", (DEVICE,))
    except Exception:  # the database may not exist yet
        return []
    keys = ("seq", "time_ms", "boot", "device_ts", "uptime_ms", "quality", "metrics")
    out = [dict(zip(keys, row, strict=True)) for row in found]
    for row in out:
        row["metrics"] = json.loads(row["metrics"])
    return out


def contiguous(seqs: list[int]) -> bool:
    return bool(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.mark.timeout(40)
def test_readings_arrive(gw: GatewayProcess, tmp_path: Path) -> None:
    with board_for(gw, tmp_path) as board:
        got = wait_for(lambda: len(rows(gw)) >= 4 and rows(gw), 20, "4 readings", board)
    seqs = [r["seq"] for r in got]
    assert seqs[0] == 1 and contiguous(seqs)
    for row in got:
        assert set(row["metrics"]) == {"temperature", "humidity"}
        assert -40 <= row["metrics"]["temperature"] <= 80 and 0 <= row["metrics"]["humidity"] <= 100
        assert row["quality"] in ("ok", "retried", "stale")
        assert row["boot"] and len(row["boot"]) == 8
        assert row["device_ts"] is not None or row["uptime_ms"] is not None
    assert any(r["device_ts"] is not None for r in got), "NTP sync never stamped a reading"
    assert "online: last_seq 0" in board.log_text()
    assert "encoding cbor" in board.log_text()  # the gateway selected edgewire.v1.cbor: binary data frames


@pytest.mark.timeout(40)
def test_readings_arrive_as_json_from_a_gateway_without_cbor(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "json") as gateway, board_for(gateway, tmp_path) as board:  # cbor off: the default
        got = wait_for(lambda: len(rows(gateway)) >= 2 and rows(gateway), 20, "2 readings", board)
        assert [r["seq"] for r in got][:2] == [1, 2]
        assert "encoding json" in board.log_text()


@pytest.mark.timeout(60)
def test_gateway_outage_is_buffered_and_delivered_once(gw: GatewayProcess, tmp_path: Path) -> None:
    with board_for(gw, tmp_path) as board:
        wait_for(lambda: len(rows(gw)) >= 2, 20, "first readings", board)
        gw.kill()
        stored_before = [r["seq"] for r in rows(gw)]
        # the board keeps sampling into its flash ring while the gateway is gone
        wait_for(lambda: board.ring_header().get("count", 0) >= 5, 20, "5 buffered readings", board)
        assert "offline:" in board.log_text()
        gw.start()
        wait_for(lambda: board.ring_header().get("count") == 0 and len(rows(gw)) >= len(stored_before) + 5,
                 20, "buffer drained into the gateway", board)
        header = board.ring_header()
    seqs = [r["seq"] for r in rows(gw)]
    assert seqs[: len(stored_before)] == stored_before
    assert contiguous(seqs) and seqs[0] == 1  # nothing lost, nothing stored twice
    assert seqs[-1] >= header["next_seq"] - 1 - 2  # at most the last couple still on their way
    assert header["dropped"] == 0


@pytest.mark.timeout(60)
def test_power_cut_mid_buffer_loses_nothing(gw: GatewayProcess, tmp_path: Path) -> None:
    board = board_for(gw, tmp_path)
    board.start()
    try:
        wait_for(lambda: len(rows(gw)) >= 2, 20, "first readings", board)
        gw.kill()
        wait_for(lambda: board.ring_header().get("count", 0) >= 4, 20, "4 buffered readings", board)
        board.kill()  # power cut while holding unacknowledged readings
        held = board.ring_header()
        acked = [r["seq"] for r in rows(gw)]
        gw.start()
        board.start()  # power back: same flash
        wait_for(lambda: len(rows(gw)) >= len(acked) + held["count"] + 1, 20, "buffered readings after reboot",
                 board)
        seqs = [r["seq"] for r in rows(gw)]
        boots = {r["boot"] for r in rows(gw)}
    finally:
        board.kill()
    assert seqs[: len(acked)] == acked
    assert contiguous(seqs) and seqs[0] == 1
    assert seqs[-1] >= held["next_seq"]  # every reading held at the cut, then new ones with higher seqs
    assert len(boots) == 2  # readings from before and after the power cut
    assert board.log_text().count("] boot ") == 2


@pytest.mark.timeout(60)
def test_commands_round_trip(gw: GatewayProcess, tmp_path: Path) -> None:
    with board_for(gw, tmp_path, output_pins={"relay": 26}) as board:
        wait_for(lambda: rows(gw), 20, "first reading", board)
        pong = gw.send_command(DEVICE, "ping", {}, timeout=10)
        assert pong["ok"] is True and pong["msg"] == "pong"
        on = gw.send_command(DEVICE, "set_output", {"output": "relay", "on": True}, timeout=10)
        assert on["ok"] is True and board.pins().get(26) == 1
        bad = gw.send_command(DEVICE, "set_output", {"output": "heater", "on": True}, timeout=10)
        assert bad["ok"] is False and "relay" in bad["msg"]
        unknown = gw.send_command(DEVICE, "self_destruct", {}, timeout=10)
        assert unknown["ok"] is False and "unknown command" in unknown["msg"]
        interval = gw.send_command(DEVICE, "set_interval", {"seconds": 3}, timeout=10)
        assert interval["ok"] is True and interval["data"]["interval_ms"] == 3000
        refused = gw.send_command(DEVICE, "set_interval", {"seconds": -1}, timeout=10)
        assert refused["ok"] is False
        limits = gw.send_command(DEVICE, "set_thresholds", {"metric": "temperature", "high": 30}, timeout=10)
        assert limits["ok"] is True and limits["data"]["thresholds"] == {"high": 30}
        reboot = gw.send_command(DEVICE, "reboot", {}, timeout=10)
        assert reboot["ok"] is True
        wait_for(lambda: board.log_text().count("] boot ") == 2, 20, "the reboot", board)
        wait_for(lambda: len({r["boot"] for r in rows(gw)}) == 2, 20, "readings after the reboot", board)
    assert contiguous([r["seq"] for r in rows(gw)])


@pytest.mark.timeout(60)
def test_flaky_dht_still_yields_readings_with_quality(gw: GatewayProcess, tmp_path: Path) -> None:
    with board_for(gw, tmp_path, speed=8.0, sim={"dht_failure_rate": 0.3, "seed": 7}) as board:
        got = wait_for(lambda: (lambda rs: len(rs) >= 12 and rs)(rows(gw)), 30, "12 readings", board)
    qualities = [r["quality"] for r in got]
    assert set(qualities) <= {"ok", "retried", "stale"}
    assert "ok" in qualities and "retried" in qualities
    assert contiguous([r["seq"] for r in got])


@pytest.mark.timeout(60)
def test_heat_spike_speeds_up_reporting(gw: GatewayProcess, tmp_path: Path) -> None:
    config: dict[str, Any] = {"interval_s": 4, "min_interval_s": 2, "max_interval_s": 16,
              "deadband": {"temperature": 8.0, "humidity": 60.0},
              "thresholds": {"temperature": {"high": 40.0}}}
    with board_for(gw, tmp_path, speed=10.0, **config) as board:
        wait_for(lambda: len(rows(gw)) >= 3, 30, "3 heartbeat readings", board)
        board.set_sim(heat_c=35.0)
        wait_for(lambda: sum(r["metrics"]["temperature"] >= 40 for r in rows(gw)) >= 5, 20,
                 "5 readings during the heat spike", board)
    got = rows(gw)
    times = [r["device_ts"] for r in got]
    assert all(t is not None for t in times[1:])
    cool = [b - a for a, b, r in zip(times[1:], times[2:], got[2:], strict=False) if r["metrics"]["temperature"] < 40]
    hot = [b - a for a, b, r in zip(times[1:], times[2:], got[2:], strict=False) if r["metrics"]["temperature"] >= 40]
    hot = hot[1:]  # the first hot reading closes a slow interval
    assert cool and hot
    assert min(cool) >= 8000, cool  # stable: only heartbeats, interval grown towards 16 s
    assert statistics.median(hot) <= 3000, hot  # beyond the threshold: every 2 s sample is reported


@pytest.mark.timeout(60)
def test_watchdog_spares_offline_node_but_resets_stalled_loop(gw: GatewayProcess, tmp_path: Path) -> None:
    board = board_for(gw, tmp_path, speed=10.0, watchdog_s=10)
    gw.kill()  # nobody is watching: the node must keep sampling, not reboot
    board.start()
    try:
        wait_for(lambda: board.ring_header().get("count", 0) >= 12, 20, "12 readings buffered offline", board)
        text = board.log_text()
        assert "WDT" not in text and text.count("] boot ") == 1  # 24+ s offline, 10 s watchdog: no reset
        board.set_sim(dht_hang_ms=30000)  # the sensor bus wedges: the loop stops making progress
        wait_for(lambda: "WDT: not fed" in board.log_text(), 20, "the watchdog reset", board)
        board.set_sim(dht_hang_ms=0)
        wait_for(lambda: board.log_text().count("] boot ") >= 2, 20, "the reboot after the reset", board)
        count = board.ring_header()["count"]
        wait_for(lambda: board.ring_header()["count"] > count, 20, "sampling after the reset", board)
    finally:
        board.kill()


@pytest.mark.timeout(60)
def test_deep_sleep_keeps_seq_and_boot_across_wakes(gw: GatewayProcess, tmp_path: Path) -> None:
    with board_for(gw, tmp_path, speed=10.0, deep_sleep=True, deadband={"temperature": 0.0}) as board:
        wait_for(lambda: board.log_text().count("machine.deepsleep(") >= 3 and len(rows(gw)) >= 3, 30,
                 "three wakes with deliveries", board)
    got = rows(gw)
    assert contiguous([r["seq"] for r in got]) and got[0]["seq"] == 1
    assert len({r["boot"] for r in got}) == 1  # one boot id spans the sleeps (RTC memory)
    assert all(r["device_ts"] is not None for r in got)  # the RTC keeps time through deep sleep
    assert board.log_text().count("] boot ") >= 3


def _make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgewire test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@pytest.mark.timeout(60)
def test_wss_with_pinned_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca_path, cert_path, key_path = _make_ca_and_server_cert(certs)
    other_ca, _, _ = _make_ca_and_server_cert(tmp_path)  # a CA that did not sign the gateway's cert
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))  # lets the helper's /healthz poll verify the gateway

    class TLSGateway(GatewayProcess):
        @property
        def http_url(self) -> str:
            return f"https://127.0.0.1:{self.port}"

    gw = TLSGateway(tmp_path, tls_cert=str(cert_path), tls_key=str(key_path))
    gw.start()
    try:
        token = gw.register(DEVICE)
        base = {"gateway_url": f"wss://127.0.0.1:{gw.port}/v1/device", "device_id": DEVICE, "token": token,
                "interval_s": 2, "min_interval_s": 2, "max_interval_s": 4}
        wrong = SimBoard(tmp_path, {**base, "ca_cert": str(other_ca)}, speed=4.0, name="wrong-ca")
        with wrong:
            wait_for(lambda: wrong.log_text().count("offline:") >= 2, 20, "refused TLS connections", wrong)
        assert "CERTIFICATE_VERIFY_FAILED" in wrong.log_text() and "online:" not in wrong.log_text()
        assert rows(gw) == []
        good = SimBoard(tmp_path, {**base, "ca_cert": str(ca_path)}, speed=4.0, name="pinned")
        with good:
            wait_for(lambda: len(rows(gw)) >= 2, 20, "readings over wss://", good)
        assert contiguous([r["seq"] for r in rows(gw)])
    finally:
        try:
            gw.stop()
        finally:
            gw.kill()


@pytest.mark.timeout(30)
def test_bad_config_is_reported_and_nothing_runs(tmp_path: Path) -> None:
    board = SimBoard(tmp_path, {"gateway_url": "http://127.0.0.1:1/v1/device", "device_id": DEVICE,
                                "token": "ewt_" + "x" * 32})
    board.start()
    try:
        wait_for(lambda: not board.alive(), 20, "the runner to return to the REPL")
    finally:
        board.kill()
    text = board.log_text()
    assert "config error: config key 'gateway_url': must start with ws:// or wss://" in text
    assert "ewt_" not in text  # no secret on the console
    assert not (board.fs / "ring.bin").exists()
