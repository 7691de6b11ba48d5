"""The results file has one writer: a second sink given the same --out (even with
--overwrite) is refused, naming the first one's pid, and changes nothing; a sink that
cannot bind leaves --out as it was."""

from __future__ import annotations

import json
import os
import time

import pytest
import zmq

from zmqvision import results

RECORD = {"image": "a.jpg", "id": "a", "job": "j", "width": 1, "height": 1, "model": "m",
          "detections": [], "error": None}


def ready(procs, p, timeout: float = 60.0) -> dict:
    """The endpoints the sink announced (``--announce``: one JSON line when bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in procs.log(p).splitlines():
            if line.startswith('{"ready"'):
                return json.loads(line)["ready"]
        if p.poll() is not None:
            raise AssertionError(f"the sink exited ({p.returncode}):\n{procs.log(p)}")
        time.sleep(0.05)
    raise AssertionError(f"the sink did not announce itself:\n{procs.log(p)}")


def sink(procs, out, results_ep, events_ep, *extra):
    return procs.start("sink", "--out", str(out), "--bind-results", results_ep,
                       "--bind-events", events_ep, "--no-cache", "--announce", *extra,
                       name="sink")


@pytest.fixture
def journal(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps(RECORD) + "\n")
    return out


def test_a_second_writer_in_one_process_is_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    first = results.JsonlWriter(out)
    first.write(RECORD)
    try:
        with pytest.raises(results.FileLocked, match=f"process {os.getpid()}"):
            results.JsonlWriter(out)  # not append: would have emptied it
        assert out.read_text() == json.dumps(RECORD, separators=(",", ":")) + "\n"
    finally:
        first.close()
    results.JsonlWriter(out).close()  # the lock goes with the writer


def test_a_second_sink_on_the_same_port_refuses_before_emptying_the_live_file(
        tmp_path, procs, journal):
    first = sink(procs, journal, "tcp://127.0.0.1:0", f"ipc://{tmp_path}/ev1")
    eps = ready(procs, first)
    before = journal.read_bytes()
    # Started by mistake: the same --out and port, asked to start afresh.
    second = sink(procs, journal, eps["results"], f"ipc://{tmp_path}/ev2", "--overwrite")
    assert procs.wait(second, 60) != 0
    assert f"process {first.pid}" in procs.log(second)
    assert journal.read_bytes() == before
    assert first.poll() is None


def test_a_second_sink_on_other_endpoints_is_refused_too(tmp_path, procs, journal):
    first = sink(procs, journal, f"ipc://{tmp_path}/r1", f"ipc://{tmp_path}/e1")
    ready(procs, first)
    before = journal.read_bytes()
    second = sink(procs, journal, f"ipc://{tmp_path}/r2", f"ipc://{tmp_path}/e2",
                  "--overwrite")
    assert procs.wait(second, 60) != 0
    assert f"process {first.pid}" in procs.log(second)
    assert journal.read_bytes() == before
    procs.stop(first)
    # The first one gone, the same command starts, and only now empties the file.
    third = sink(procs, journal, f"ipc://{tmp_path}/r2", f"ipc://{tmp_path}/e2",
                 "--overwrite")
    ready(procs, third)
    assert journal.read_bytes() == b""


def test_a_sink_that_cannot_bind_leaves_out_as_it_was(tmp_path, procs, journal):
    ctx = zmq.Context()
    taken = ctx.socket(zmq.PULL)
    taken.linger = 0
    try:
        taken.bind("tcp://127.0.0.1:0")
        port = taken.getsockopt_string(zmq.LAST_ENDPOINT)
        before = journal.read_bytes()
        p = sink(procs, journal, port, f"ipc://{tmp_path}/e", "--overwrite")
        assert procs.wait(p, 60) != 0
        assert journal.read_bytes() == before
        fresh = tmp_path / "new.jsonl"
        p = sink(procs, fresh, port, f"ipc://{tmp_path}/e")
        assert procs.wait(p, 60) != 0
        assert not fresh.exists()
    finally:
        taken.close()
        ctx.term()
