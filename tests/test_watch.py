"""The watcher's state: built from real encoded events with a controlled clock, so lateness,
death, late joining and garbage are checked exactly."""

from __future__ import annotations

import io
import json

import msgpack
import zmq

from zmqvision import protocol as P
from zmqvision.watch import WatchState, event_json, render, watch


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def beat(worker="w1", period=1.0, done=5, pid=11):
    return P.Heartbeat(worker=worker, host="h", pid=pid, device="CPU", model="m@1",
                       tiles_done=done, tiles_failed=0, tiles_per_s=2.0, in_flight=1, queue=0,
                       uptime=3.0, period=period, requests=2)


def feed(state, msg):
    frames = [f if isinstance(f, bytes) else bytes(memoryview(f)) for f in P.encode(msg)]
    return state.ingest_frames(frames)


def test_worker_goes_late_then_dead_by_its_own_period():
    clock = Clock()
    s = WatchState(clock=clock)
    feed(s, beat(period=0.5))
    states = []
    for dt in (0.5, 0.8, 1.0, 1.3):
        clock.t = 1000.0 + dt
        states.append(s.snapshot()["workers"][0]["state"])
    assert states == ["alive", "late", "late", "dead"]
    feed(s, beat(period=0.5, done=9))  # beats again: alive again
    assert s.snapshot()["workers"][0]["state"] == "alive"
    assert s.snapshot()["workers"][0]["tiles_done"] == 9


def test_late_joiner_learns_silent_workers_from_the_roster():
    clock = Clock()
    s = WatchState(clock=clock)
    entries = ({**beat("alive-one").header(), "age": 0.2},
               {**beat("gone", pid=12).header(), "age": 10.0})
    feed(s, P.Workers(sink="s", workers=entries))
    got = {w["worker"]: w["state"] for w in s.snapshot()["workers"]}
    assert got == {"alive-one": "alive", "gone": "dead"}
    # A relayed heartbeat is fresher than the roster's view and wins.
    feed(s, beat("gone", pid=12))
    assert {w["worker"]: w["state"] for w in s.snapshot()["workers"]}["gone"] == "alive"


def test_restarted_worker_is_a_new_row():
    s = WatchState(clock=Clock())
    feed(s, beat("host-1-aaaa", pid=1))
    feed(s, beat("host-2-bbbb", pid=2))
    assert len(s.snapshot()["workers"]) == 2


def test_job_progress_rate_eta_failures_and_summary():
    clock = Clock()
    s = WatchState(clock=clock)
    fail = {"image": "i9", "path": "bad.jpg", "type": "corrupt_image", "message": "truncated"}
    feed(s, P.Progress(job="j", images_seen=4, images_done=1, images_failed=1, tiles_seen=40,
                       tiles_done=10, elapsed=2.0, failures=(fail,)))
    clock.t += 1
    feed(s, P.Progress(job="j", images_seen=4, images_done=2, images_failed=1, tiles_seen=40,
                       tiles_done=20, images_total=4, tiles_total=40, elapsed=3.0))
    (job,) = s.snapshot()["jobs"]
    assert job["tiles_per_s"] > 0 and job["eta"] is not None and job["eta"] > 0
    assert (job["images_done"], job["images_total"], job["done"]) == (2, 4, False)
    feed(s, P.Failure(job="j", image="i9", path="bad.jpg",
                      error={"type": "corrupt_image", "message": "truncated"}))
    assert len(s.snapshot()["failures"]) == 1  # the same failure heard twice shows once
    feed(s, P.JobDone(job="j", images=4, failed=1, tiles=40, detections=7, seconds=4.0,
                      out="/r.jsonl"))
    (job,) = s.snapshot()["jobs"]
    assert job["done"] and job["summary"]["images"] == 4 and job["eta"] == 0.0


def test_job_done_heard_without_progress():
    s = WatchState(clock=Clock())
    feed(s, P.JobDone(job="k", images=2, failed=0, tiles=3, detections=1, seconds=1.0,
                      out="/x"))
    (job,) = s.snapshot()["jobs"]
    assert job["done"] and job["tiles_done"] == 3


def test_sink_reachable_then_silent():
    clock = Clock()
    s = WatchState(clock=clock)
    assert s.snapshot()["sink"]["state"] == "unheard"
    feed(s, P.SinkStatus(sink="s", host="h", pid=1, uptime=1, jobs_active=0, bad_messages=0))
    assert s.snapshot()["sink"]["state"] == "reachable"
    clock.t += 4
    snap = s.snapshot()["sink"]
    assert snap["state"] == "silent" and snap["silent_for"] >= 4


def test_garbage_is_ignored_and_counted():
    s = WatchState(clock=Clock())
    for frames in ([b"zv.heartbeat", b"\x00\x01"], [b"foreign"], [],
                   [b"zv.workers", msgpack.packb({"v": 1, "sink": "s", "workers": [5], "t": 1})],
                   [b"zv.progress", msgpack.packb({"v": 9})]):
        assert s.ingest_frames(frames) is None
    assert s.bad.count == 5 and s.snapshot()["workers"] == []


def test_render_and_json_lines_do_not_crash_on_any_state():
    from rich.console import Console

    s = WatchState(clock=Clock())
    buf = io.StringIO()
    Console(file=buf, width=120).print(render(s, "tcp://x:1"))
    assert "waiting" in buf.getvalue()
    feed(s, beat())
    feed(s, P.Progress(job="j", images_seen=1, images_done=0, images_failed=0, tiles_seen=3,
                       tiles_done=1, elapsed=1.0))
    Console(file=buf, width=120).print(render(s, "tcp://x:1"))
    assert "w1" in buf.getvalue() and "running" in buf.getvalue()
    line = json.loads(event_json(beat()))
    assert line["type"] == "zv.heartbeat" and line["worker"] == "w1"


def test_once_against_a_real_pub_socket(tmp_path):
    """`watch --once` over a real socket: a snapshot after one burst, garbage ignored."""
    import threading

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def publish():
        while not stop.is_set():
            pub.send_multipart([b"zv.heartbeat", b"\xff"])  # garbage under a real topic
            for msg in (P.SinkStatus(sink="s", host="h", pid=1, uptime=1, jobs_active=1,
                                     bad_messages=0),
                        P.Workers(sink="s", workers=({**beat().header(), "age": 0.1},)),
                        P.Progress(job="j", images_seen=2, images_done=1, images_failed=0,
                                   tiles_seen=8, tiles_done=4, elapsed=1.0)):
                pub.send_multipart(P.encode(msg))
            stop.wait(0.1)

    t = threading.Thread(target=publish)
    t.start()
    try:
        out = io.StringIO()
        assert watch(f"tcp://127.0.0.1:{port}", mode="once", as_json=True, timeout=10,
                     out=out) == 0
        snap = json.loads(out.getvalue())
        assert snap["sink"]["state"] == "reachable"
        assert [w["worker"] for w in snap["workers"]] == ["w1"]
        assert snap["bad_messages"] >= 1
    finally:
        stop.set()
        t.join(5)
        pub.close(linger=0)
        ctx.term()
    # Nobody there: exit code 1 after the timeout, no hang.
    assert watch(f"tcp://127.0.0.1:{port}", mode="once", timeout=0.5, out=io.StringIO()) == 1
