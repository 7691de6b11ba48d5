"""Several ventilators feeding one pool and one sink at once: a large job split by folder.

Two ``zmqvision ventilate`` processes, each on its own folder and its own tiles endpoint
(one sends whole images, ``--wire image``, the other raw tiles), two workers that serve
both (``--tiles A,B``), one sink. Both jobs run at the same time and complete; each
folder's records carry its own job and nothing of the other's (an identical file in both
folders included), and every record equals a plain ``zmqvision run`` of the two folders.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest
import zmq

from tests.conftest import EXAMPLES, PHOTOS, ROOT, ipc
from tests.slow_worker import hold
from zmqvision import protocol

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

MODEL = "ssd-mobilenetv2-oid"


def _records(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _comparable(recs: list[dict]) -> list:
    return sorted((r["image"], r["width"], r["height"], r["error"], r["tiles"],
                   [(d["label"], round(d["score"], 5), [round(v, 3) for v in d["box"]])
                    for d in r["detections"]]) for r in recs)


class EventLog:
    """Every Progress and JobDone the sink publishes, in order, from a thread."""

    def __init__(self, endpoint: str) -> None:
        self.events: list[protocol.Message] = []
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.linger = 0
        for t in (protocol.MsgType.PROGRESS, protocol.MsgType.JOB_DONE):
            self._sub.setsockopt(zmq.SUBSCRIBE, t.tag)
        self._sub.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sub.poll(100):
                self.events.append(protocol.decode(self._sub.recv_multipart()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sub.close(0)
        self._ctx.term()


def test_two_ventilators_share_workers_and_a_sink(tmp_path, procs, models_ready):
    from PIL import Image

    parent = tmp_path / "split"
    a, b = parent / "a", parent / "b"
    a.mkdir(parents=True)
    b.mkdir()
    photos = [Image.open(EXAMPLES / p).convert("RGB") for p in PHOTOS]
    for i in range(4):
        photos[i].resize((1600, 1200)).save(a / f"a{i}.jpg", quality=90)  # 35 tiles each
        photos[3 - i].resize((1200, 900)).rotate(15).save(b / f"b{i}.jpg", quality=90)
    shutil.copy(a / "a0.jpg", b / "a0.jpg")  # the same bytes in both jobs

    ref_out = tmp_path / "ref.jsonl"
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(parent), "--model",
                        MODEL, "--out", str(ref_out), "--no-progress", "--wire", "raw"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    reference = _comparable(_records(ref_out))
    assert len(reference) == 9

    out = tmp_path / "out.jsonl"
    _, results, events = procs.sink(out)
    log = EventLog(events)
    try:
        tiles = {name: ipc(tmp_path, f"tiles-{name}") for name in ("a", "b")}
        workers = [procs.start("worker", "--model", MODEL, "--tiles",
                               f"{tiles['a']},{tiles['b']}", "--results", results,
                               "--threads", "1", "--requests", "2", "--heartbeat", "0.5",
                               "--announce", name="worker", **hold(20)) for _ in range(2)]
        for w in workers:
            procs.announced(w)
        vents = {name: procs.start("ventilate", str(folder), "--model", MODEL, "--bind",
                                   tiles[name], "--sink-results", results, "--sink-events",
                                   events, "--no-progress", "-v", *wire, name=f"vent-{name}")
                 for name, folder, wire in (("a", a, ("--wire", "image")), ("b", b, ()))}
        for v in vents.values():
            assert procs.wait(v, 300) == 0, procs.log(v)
        assert "4 images, 0 failed" in procs.log(vents["a"])
        assert "5 images, 0 failed" in procs.log(vents["b"])
        assert "tiles as image" in procs.log(vents["a"])
    finally:
        log.close()

    recs = _records(out)
    assert len(recs) == 9 and len({r["id"] for r in recs}) == 9, recs
    jobs = {folder: {r["job"] for r in recs if r["image"].startswith(str(folder) + "/")}
            for folder in (a, b)}
    assert len(jobs[a]) == 1 and len(jobs[b]) == 1 and jobs[a] != jobs[b], jobs
    assert _comparable(recs) == reference  # each image once, as a plain run gives it

    # The two jobs ran at once: the sink reported progress on each before the other ended.
    done_at = {e.job: i for i, e in enumerate(log.events) if isinstance(e, protocol.JobDone)}
    assert set(done_at) == jobs[a] | jobs[b], done_at
    for job in done_at:
        other = next(j for j in done_at if j != job)
        assert any(isinstance(e, protocol.Progress) and e.job == job and e.tiles_done > 0
                   for e in log.events[:done_at[other]]), (job, "no progress before", other)
