"""The host process's pure parts (gateway/workers.py, gateway/host_metrics.py): how many workers,
their names, the sockets they share, and one /metrics page from several."""

from __future__ import annotations

import socket

import pytest

from gateway.config import GatewayConfig
from gateway.host_metrics import merge_pages
from gateway.workers import bind_sockets, check_workers, default_workers, worker_ids


def test_workers_default_to_the_cores_and_to_one_process_with_a_bus() -> None:
    assert check_workers(GatewayConfig(workers=1)) == 0  # one process: no host
    assert check_workers(GatewayConfig(workers=3)) == 3
    expected = default_workers() if default_workers() > 1 else 0
    assert check_workers(GatewayConfig()) == expected
    assert check_workers(GatewayConfig(bus="redis://127.0.0.1:6379/0")) == 0  # a cluster scales with instances
    assert check_workers(GatewayConfig(bus="redis://127.0.0.1:6379/0", workers=2)) == 2


def test_worker_ids_are_valid_instance_ids() -> None:
    assert worker_ids(GatewayConfig(instance_id="gw"), 2) == ["gw-w1", "gw-w2"]
    long = worker_ids(GatewayConfig(instance_id="a" * 63), 12)
    assert all(len(name) <= 63 for name in long) and len(set(long)) == 12


def test_bind_sockets_share_one_port_and_refuse_a_port_in_use() -> None:
    socks = bind_sockets("127.0.0.1", 0, 2)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1
        port = ports.pop()
        with pytest.raises(OSError):  # a second gateway on the same port fails, reuseport or not
            bind_sockets("127.0.0.1", port, 2)
        other = socket.socket()
        try:
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        finally:
            other.close()
    finally:
        for s in socks:
            s.close()


def test_merge_pages_sums_counters_and_keeps_the_rest_sensible() -> None:
    one = ("# HELP edgewire_readings_stored_total Readings.\n# TYPE edgewire_readings_stored_total counter\n"
           "edgewire_readings_stored_total 10\n"
           'edgewire_ack_latency_seconds_bucket{le="0.1"} 4\n'
           "edgewire_up 1\nprocess_start_time_seconds 100.5\n"
           'edgewire_build_info{version="1"} 1\n'
           'edgewire_worker_devices_online{worker="w1"} 3\n')
    two = ("# HELP edgewire_readings_stored_total Readings.\n# TYPE edgewire_readings_stored_total counter\n"
           "edgewire_readings_stored_total 5\n"
           'edgewire_ack_latency_seconds_bucket{le="0.1"} 6\n'
           "edgewire_up 0\nprocess_start_time_seconds 90.25\n"
           'edgewire_build_info{version="1"} 1\n'
           'edgewire_worker_devices_online{worker="w2"} 4\n')
    merged = merge_pages([one, two])
    lines = merged.splitlines()
    assert lines.count("# HELP edgewire_readings_stored_total Readings.") == 1
    assert "edgewire_readings_stored_total 15" in lines
    assert 'edgewire_ack_latency_seconds_bucket{le="0.1"} 10' in lines
    assert "edgewire_up 0" in lines  # down if any worker is down
    assert "process_start_time_seconds 90.25" in lines
    assert 'edgewire_build_info{version="1"} 1' in lines
    assert 'edgewire_worker_devices_online{worker="w1"} 3' in lines
    assert 'edgewire_worker_devices_online{worker="w2"} 4' in lines
