"""Memory a stranger can make the sink and the ventilator spend (issue 16, item 7), with
real processes over TCP: a 10 MB subscription to the sink's events port (before: +1.1 GB
in the sink, never released), and messages of 100 frames of 1 MiB (each frame under
MAXMSGSIZE, which ZeroMQ checks per frame) to the sink and to the ventilator. Each may
cost +50 MB of RSS at most, and both roles still stop at once on SIGTERM.
benchmarks/attacks.py measures these and two more."""

from __future__ import annotations

import time

import pytest
import zmq

from tests.attacks import MIB, settled, zmtp_subscribe
from tests.conftest import EXAMPLES, ipc, wait_event
from zmqvision import protocol as P

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BOUND = 50 * MIB


def settled_rss(pid: int, limit_s: float = 30.0) -> int:
    """RSS once it changed by less than 1 MiB over 2 s (or after ``limit_s``)."""
    return settled([pid], limit_s, every=0.25)[0]


@pytest.fixture
def roles(procs, tmp_path):
    tiles = ipc(tmp_path, "tiles")
    sink, results, events = procs.sink(tmp_path / "out.jsonl", "--no-cache")
    vent = procs.start("ventilate", str(EXAMPLES / "chelsea.jpg"), "--bind", tiles,
                       "--sink-results", results, "--sink-events", events, "--no-progress",
                       "--no-cache", name="ventilate")
    # No worker: the ventilator waits with its job announced and its tiles socket bound.
    wait_event(events, P.MsgType.PROGRESS, lambda m: m.images_seen >= 1, timeout=60,
               alive=lambda: sink.poll() is None and vent.poll() is None)
    return sink, vent, tiles, results, events


def _stops_at_once(procs, *ps) -> None:
    for p in ps:
        t0 = time.monotonic()
        p.terminate()
        procs.wait(p, 10)
        assert time.monotonic() - t0 < 5, "SIGTERM took over 5 s"


def test_a_10mb_subscription_costs_the_sink_nothing(roles, procs):
    sink, vent, _, _, events = roles
    before = settled_rss(sink.pid)
    zmtp_subscribe(events, b"z" * 10_000_000)
    after = settled_rss(sink.pid)
    assert after - before < BOUND, f"sink +{(after - before) / MIB:.0f} MiB"
    # The sink still publishes to its real subscribers.
    wait_event(events, P.MsgType.SINK_STATUS, lambda m: True, timeout=10)
    _stops_at_once(procs, vent, sink)


def test_messages_of_100_frames_of_1mib_are_dropped_before_decoding(roles, procs):
    sink, vent, tiles, results, events = roles
    before = [settled_rss(sink.pid), settled_rss(vent.pid)]
    ctx = zmq.Context()
    try:
        big = [b"\0" * MIB] * 100
        for _ in range(3):
            for kind, endpoint, tag in ((zmq.PUSH, results, b"zv.result"),
                                        (zmq.DEALER, tiles, b"zv.ready")):
                s = ctx.socket(kind)
                s.linger = 5000
                s.connect(endpoint)
                s.send_multipart([tag, *big], copy=False)
                s.close()
    finally:
        ctx.term()
    wait_event(events, P.MsgType.SINK_STATUS, lambda m: m.bad_messages >= 3, timeout=30)
    after = [settled_rss(sink.pid), settled_rss(vent.pid)]
    for role, b, a in zip(("sink", "ventilator"), before, after, strict=True):
        assert a - b < BOUND, f"{role} +{(a - b) / MIB:.0f} MiB"
    _stops_at_once(procs, vent, sink)
    for p in (sink, vent):
        assert "frames (at most" in procs.log(p), procs.log(p)
