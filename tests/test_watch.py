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


def test_no_eta_while_the_total_is_unknown_then_a_real_one():
    """Inputs still being walked (no JobEnd yet): `N/?` and no ETA, however fast the job
    goes (an ETA from the tiles announced so far was a guess: "ETA 0s" at 113/?)."""
    from rich.console import Console

    clock = Clock()
    s = WatchState(clock=clock)
    for k in range(1, 4):
        feed(s, P.Progress(job="j", images_seen=10 * k, images_done=9 * k, images_failed=0,
                           tiles_seen=20 * k, tiles_done=18 * k, elapsed=float(k)))
        clock.t += 1
    (job,) = s.snapshot()["jobs"]
    assert job["tiles_per_s"] > 0 and job["eta"] is None and job["images_total"] is None
    buf = io.StringIO()
    Console(file=buf, width=160).print(render(s, "tcp://x:1"))
    assert "27/?" in buf.getvalue() and "0s" not in buf.getvalue(), buf.getvalue()
    feed(s, P.Progress(job="j", images_seen=40, images_done=36, images_failed=0,
                       tiles_seen=80, tiles_done=72, images_total=40, tiles_total=80,
                       elapsed=4.0))
    assert s.snapshot()["jobs"][0]["eta"] > 0


def test_finished_jobs_show_their_final_average_rate_the_summarys():
    """A finished job's rate is tiles / seconds, what its summary line says, not the last
    smoothed sample (0.0/s once its progress stopped moving)."""
    from zmqvision.console import summary_line

    clock = Clock()
    s = WatchState(clock=clock)
    feed(s, P.Progress(job="j", images_seen=4, images_done=1, images_failed=0,
                       tiles_seen=40, tiles_done=10, elapsed=1.0))
    clock.t += 1
    feed(s, P.Progress(job="j", images_seen=4, images_done=4, images_failed=0,
                       tiles_seen=40, tiles_done=40, images_total=4, tiles_total=40,
                       elapsed=1.5, done=True))
    done = P.JobDone(job="j", images=4, failed=0, tiles=40, detections=7, seconds=1.6,
                     out="/r.jsonl")
    feed(s, done)
    feed(s, P.JobDone(job="k", images=2, failed=0, tiles=3, detections=1, seconds=2.0,
                      out="/x"))  # heard only its summary
    rates = {j["job"]: j["tiles_per_s"] for j in s.snapshot()["jobs"]}
    assert rates == {"j": 25.0, "k": 1.5}
    assert f"({rates['j']:.1f} tiles/s)" in summary_line(done)


def test_a_job_whose_counters_stop_is_stalled_then_abandoned():
    """The sink keeps reporting a job whose ventilator died; its counters no longer move:
    stalled after STALLED_S, abandoned after ABANDONED_S, running again if they move."""
    from rich.console import Console

    from zmqvision.watch import ABANDONED_S, STALLED_S

    clock = Clock()
    s = WatchState(clock=clock)

    def snap(done, elapsed):
        feed(s, P.Progress(job="j", images_seen=5, images_done=done, images_failed=0,
                           tiles_seen=10, tiles_done=2 * done, elapsed=elapsed))
        return s.snapshot()["jobs"][0]

    assert snap(1, 1.0)["state"] == "running"
    clock.t += STALLED_S + 1
    job = snap(1, 2.0 + STALLED_S)  # the same counters, a later snapshot
    assert job["state"] == "stalled" and job["eta"] is None
    clock.t += ABANDONED_S
    assert snap(1, 3.0 + ABANDONED_S)["state"] == "abandoned"
    buf = io.StringIO()
    Console(file=buf, width=160).print(render(s, "tcp://x:1"))
    assert "abandoned (no progress for 5m" in buf.getvalue(), buf.getvalue()
    clock.t += 1
    assert snap(2, 4.0 + ABANDONED_S)["state"] == "running"
