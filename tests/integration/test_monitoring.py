"""Monitoring with real processes over TCP: heartbeats, progress, late joiners, dead and hung
workers, many (and stopped) watchers, a restarted sink, and the live view in a terminal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import zmq

from tests.conftest import ROOT, ipc, wait_until
from zmqvision.watch import WatchState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "ssd-mobilenetv2-oid"


@pytest.fixture
def big_dir(tmp_path):
    """A job long enough to look at while it runs: 10 images × 35 tiles."""
    from PIL import Image

    d = tmp_path / "big"
    d.mkdir()
    photo = Image.open(ROOT / "examples" / "images" / "astronaut.jpg").resize((1600, 1200))
    for i in range(10):
        photo.rotate(i * 3).save(d / f"img{i}.jpg", quality=90)
    return d


class Cluster:
    """A sink (started first: the others connect to the endpoints it announces), workers,
    watchers and ventilators, which bind their tiles on an ipc path of the test's own."""

    def __init__(self, procs, tmp_path):
        self.procs = procs
        self.tmp = tmp_path
        self.tiles = ipc(tmp_path, "tiles")
        self.results = self.events = None
        self.out = tmp_path / "out.jsonl"

    def sink(self, **bind):
        sink, self.results, self.events = self.procs.sink(self.out, "--append", **bind)
        return sink

    def worker(self, *extra):
        return self.procs.start("worker", "--model", MODEL, "--tiles", self.tiles, "--results",
                                self.results, "--threads", "1", *extra, name="worker")

    def ventilate(self, inputs):
        return self.procs.start("ventilate", str(inputs), "--model", MODEL, "--bind",
                                self.tiles, "--sink-results", self.results, "--sink-events",
                                self.events, "--no-progress", name="ventilate")

    def watch(self, *extra):
        return self.procs.start("watch", "--connect", self.events, *extra, name="watch")


class InProcessWatcher:
    """A WatchState fed by a real SUB socket on a thread, for timing-sensitive checks."""

    def __init__(self, endpoint):
        self.state = WatchState()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(endpoint,))
        self.thread.start()

    def _run(self, endpoint):
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"zv.")
        sub.connect(endpoint)
        try:
            while not self.stop.is_set():
                if sub.poll(50):
                    frames = sub.recv_multipart()
                    with self.lock:
                        self.state.ingest_frames(frames)
        finally:
            sub.close(linger=0)
            ctx.term()

    def snapshot(self):
        with self.lock:
            return self.state.snapshot()

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.snapshot()}")

    def close(self):
        self.stop.set()
        self.thread.join(10)


def states(snap):
    return {w["pid"]: w["state"] for w in snap["workers"]}


def wait_subscribed(procs, watcher) -> None:
    """A watcher has printed an event (the sink's status comes every second or so): its
    subscription is in place, so it misses nothing from now on."""
    wait_until(lambda: procs.json_lines(watcher), 30, "the watcher's first event",
               alive=lambda: watcher.poll() is None)


def test_json_events_and_a_late_once_snapshot(big_dir, tmp_path, procs, models_ready):
    c = Cluster(procs, tmp_path)
    c.sink()
    w1, w2 = c.worker(), c.worker()
    watcher = c.watch("--json")
    wait_subscribed(procs, watcher)
    vent = c.ventilate(big_dir)
    # Mid-job: a watcher started now learns both workers and the progress so far.
    deadline = time.monotonic() + 120
    snap = None
    while time.monotonic() < deadline and vent.poll() is None:
        once = subprocess.run(
            [*_zmqvision(), "watch", "--connect", c.events, "--once", "--json", "--timeout",
             "5"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert once.returncode == 0, once.stderr
        snap = json.loads(once.stdout)
        jobs = [j for j in snap["jobs"] if not j["done"]]
        if jobs and jobs[0]["tiles_done"] > 0 and len(snap["workers"]) == 2:
            break
        snap = None
    assert snap is not None, "no mid-job snapshot with both workers and partial progress"
    assert {w["pid"] for w in snap["workers"]} == {w1.pid, w2.pid}
    assert all(w["state"] == "alive" for w in snap["workers"])
    job = next(j for j in snap["jobs"] if not j["done"])
    assert job["tiles_done"] > 0 and not job["done"]
    assert procs.wait(vent, 240) == 0, procs.log(vent)
    # Everything up to the job's end has reached the watcher's output.
    wait_until(lambda: any(e["type"] == "zv.job_done" for e in procs.json_lines(watcher)),
               30, "the watcher to print the job's end")
    procs.stop(watcher)
    events = procs.json_lines(watcher)
    beats = {e["pid"] for e in events if e["type"] == "zv.heartbeat"}
    assert {w1.pid, w2.pid} <= beats
    done = [e for e in events if e["type"] == "zv.job_done"]
    assert done and done[-1]["images"] == 10 and done[-1]["tiles"] == 350
    last = [e for e in events if e["type"] == "zv.progress"][-1]
    assert (last["images_done"], last["images_total"]) == (10, 10)
    assert (last["tiles_done"], last["tiles_total"]) == (350, 350)


def _zmqvision():
    import sys

    return [sys.executable, "-m", "zmqvision"]


def test_killed_worker_dead_within_three_periods_hung_worker_late_then_dead(
        tmp_path, procs, models_ready):
    period = 0.5
    c = Cluster(procs, tmp_path)
    c.sink()
    a = c.worker("--heartbeat", str(period))
    b = c.worker("--heartbeat", str(period))
    w = InProcessWatcher(c.events)
    try:
        w.wait_for(lambda s: states(s).get(a.pid) == "alive" and states(s).get(b.pid) == "alive",
                   60, "two live workers")
        a.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        w.wait_for(lambda s: states(s).get(a.pid) == "dead", 10, "the killed worker dead")
        took = time.monotonic() - killed
        assert took <= 3 * period + 0.5, took  # tolerance for a loaded 2-core machine
        assert states(w.snapshot())[b.pid] == "alive"

        b.send_signal(signal.SIGSTOP)  # hung: the process lives, the loop does not beat
        try:
            w.wait_for(lambda s: states(s).get(b.pid) == "late", 10, "the hung worker late")
            w.wait_for(lambda s: states(s).get(b.pid) == "dead", 10, "the hung worker dead")
        finally:
            b.send_signal(signal.SIGCONT)
        w.wait_for(lambda s: states(s).get(b.pid) == "alive", 10, "the resumed worker alive")

        c2 = c.worker("--heartbeat", str(period))  # a restarted worker is a new row
        w.wait_for(lambda s: states(s).get(c2.pid) == "alive", 60, "the new worker")
        assert states(w.snapshot())[a.pid] == "dead"
    finally:
        w.close()


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_many_watchers_and_a_stopped_one_do_not_hold_the_pipeline(big_dir, tmp_path, procs,
                                                                   models_ready):
    c = Cluster(procs, tmp_path)
    sink = c.sink()
    c.worker()
    c.worker()
    watchers = [c.watch("--json") for _ in range(5)]
    stopped = c.watch("--json")
    for p in [*watchers, stopped]:
        wait_subscribed(procs, p)
    stopped.send_signal(signal.SIGSTOP)
    rss_before = _rss_kib(sink.pid)
    try:
        for _ in range(2):
            vent = c.ventilate(big_dir)
            assert procs.wait(vent, 300) == 0, procs.log(vent)
        rss_after = _rss_kib(sink.pid)
    finally:
        stopped.send_signal(signal.SIGCONT)

    def jobs_done(p):
        return {e["job"] for e in procs.json_lines(p) if e["type"] == "zv.job_done"}

    for p in watchers:  # each saw both jobs end
        wait_until(lambda p=p: len(jobs_done(p)) == 2, 30, "both jobs' ends in a watcher")
        procs.stop(p)
        assert len(jobs_done(p)) == 2
    # The stopped watcher's backlog is bounded by the PUB high-water mark: the sink grew by
    # far less than the 700 tiles' worth of events would be if it kept them all.
    assert rss_after - rss_before < 60 * 1024, (rss_before, rss_after)


def test_watcher_survives_a_sink_restart(tmp_path, procs, models_ready):
    c = Cluster(procs, tmp_path)
    # On ipc paths, which the restarted sink binds again (a port could be taken meanwhile).
    bind = {"results": ipc(tmp_path, "results"), "events": ipc(tmp_path, "events")}
    sink = c.sink(**bind)
    w = InProcessWatcher(c.events)
    try:
        first = w.wait_for(lambda s: s["sink"]["state"] == "reachable", 30, "the sink")
        procs.stop(sink)
        w.wait_for(lambda s: s["sink"]["state"] == "silent", 10, "the sink silent")
        c.sink(**bind)
        again = w.wait_for(lambda s: s["sink"]["state"] == "reachable"
                           and s["sink"]["pid"] != first["sink"]["pid"], 30, "the new sink")
        assert again["sink"]["uptime"] < first["sink"]["uptime"] + 30
    finally:
        w.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_view_in_a_real_terminal(big_dir, tmp_path, procs, models_ready):
    c = Cluster(procs, tmp_path)
    c.sink()
    a, b = c.worker(), c.worker()
    session = f"zv{os.getpid()}-{tmp_path.name}"  # unique on this machine
    cmd = " ".join([*_zmqvision(), "watch", "--connect", c.events])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd],
                   check=True, cwd=ROOT, timeout=30)
    try:
        vent = c.ventilate(big_dir)

        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True, timeout=10).stdout

        deadline = time.monotonic() + 120
        text = ""
        while time.monotonic() < deadline:
            text = screen()
            if f"-{a.pid}-" in text and f"-{b.pid}-" in text and "running" in text:
                break
            time.sleep(0.3)
        # Worker ids are host-pid-random: both rows are on screen, not truncated away.
        assert f"-{a.pid}-" in text and f"-{b.pid}-" in text, text
        assert "alive" in text and "running" in text and "━" in text, text
        assert procs.wait(vent, 240) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "complete in" not in text:
            text = screen()
            time.sleep(0.3)
        assert "complete in" in text and "10/10" in text, text
        assert "ssd-mobilenetv2-oid" in text, text
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = subprocess.run(["tmux", "has-session", "-t", session],
                                   capture_output=True, timeout=10).returncode == 0
            if not alive:
                break
            time.sleep(0.2)
        assert not alive, "watch did not exit on Ctrl-C"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
