"""Stable roles bind loopback unless told otherwise; a plain-text bind other hosts can reach
needs --insecure and says so in the log (real processes, ports chosen by the kernel)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, Processes
from zmqvision import sockets

pytestmark = pytest.mark.timeout(120)


def _zv(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqvision", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_default_bind_endpoints_are_loopback():
    for port in (sockets.TILES_PORT, sockets.RESULTS_PORT, sockets.EVENTS_PORT):
        assert sockets.bind_endpoint(port) == f"tcp://127.0.0.1:{port}"
    assert "tcp://127.0.0.1:5558" in _zv("sink", "--help").stdout
    assert "tcp://127.0.0.1:5557" in _zv("ventilate", "--help").stdout


@pytest.mark.parametrize("endpoint,local", [
    ("tcp://127.0.0.1:5558", True), ("tcp://127.3.4.5:0", True), ("tcp://[::1]:5558", True),
    ("tcp://localhost:1", True), ("ipc:///tmp/x", True), ("inproc://zv", True),
    ("tcp://*:5558", False), ("tcp://0.0.0.0:0", False), ("tcp://10.0.0.1:5558", False),
    ("tcp://eth0:5558", False), ("tcp://[::]:5558", False), ("tcp://example.org:1", False),
])
def test_what_counts_as_loopback(endpoint, local):
    assert sockets.is_loopback(endpoint) is local


@pytest.mark.parametrize("args", [
    ("sink", "--bind-results", "tcp://*:0", "--bind-events", "tcp://127.0.0.1:0"),
    ("sink", "--bind-results", "tcp://127.0.0.1:0", "--bind-events", "tcp://0.0.0.0:0"),
    ("ventilate", "README.md", "--bind", "tcp://*:0", "--sink-results", "ipc:///nowhere",
     "--sink-events", "ipc:///nowhere"),
    ("run", "README.md", "--events", "tcp://*:0"),
])
def test_a_plain_text_bind_other_hosts_can_reach_needs_insecure(args, tmp_path):
    p = _zv(*args, "--out", str(tmp_path / "o.jsonl")) if args[0] != "ventilate" else _zv(*args)
    assert p.returncode == 2, p.stdout + p.stderr  # a usage error, before anything starts
    assert "--curve" in p.stderr and "--insecure" in p.stderr, p.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_insecure_binds_everywhere_with_a_warning(tmp_path):
    procs = Processes(tmp_path)
    try:
        p = procs.start("sink", "--out", str(tmp_path / "o.jsonl"), "--bind-results",
                        "tcp://*:0", "--bind-events", "tcp://127.0.0.1:0", "--insecure",
                        name="sink")
        deadline = time.monotonic() + 60
        while "results on" not in procs.log(p) and p.poll() is None:
            assert time.monotonic() < deadline, procs.log(p)
            time.sleep(0.1)
        log = procs.log(p)
        assert "results on tcp://0.0.0.0:" in log, log
        assert "plain text, reachable from other hosts (--insecure)" in log, log
    finally:
        procs.stop_all()
