"""Nobody outside a job can end, shorten, alter or stall it, even without CURVE: a process
that can reach the sink's results port and read its events learns the job id and the image
ids, but not the job's secret, and every control message it forges is refused (a counted
bad message). The secret never appears on the sink's PUB socket. Real processes over TCP
on 127.0.0.1."""

from __future__ import annotations

import json
import re
import secrets
import time

import numpy as np
import pytest
import zmq

from tests.conftest import EXAMPLES, ipc, wait_event
from tests.slow_worker import hold
from zmqvision import protocol as P
from zmqvision.boxes import Detections

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "ssd-mobilenetv2-oid"
IMAGES = 6


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    """6 images of 600 x 450 px: 4 tiles of 300 px each, 24 tiles in all."""
    from PIL import Image

    d = tmp_path_factory.mktemp("small")
    photo = Image.open(EXAMPLES / "chelsea.jpg").convert("RGB").resize((600, 450))
    for i in range(IMAGES):
        photo.rotate(i * 11).save(d / f"img{i}.jpg", quality=90)
    return d


class Cluster:
    def __init__(self, procs, tmp_path):
        self.procs = procs
        self.tiles = ipc(tmp_path, "tiles")
        self.results = self.events = None  # what the sink announces it bound
        self.out = tmp_path / "out.jsonl"

    def sink(self):
        sink, self.results, self.events = self.procs.sink(self.out)
        return sink

    def worker(self, hold_ms: float):
        return self.procs.start("worker", "--model", MODEL, "--tiles", self.tiles,
                                "--results", self.results, "--threads", "1", name="worker",
                                **hold(hold_ms))

    def ventilate(self, folder):
        return self.procs.start("ventilate", str(folder), "--model", MODEL, "--bind",
                                self.tiles, "--sink-results", self.results, "--sink-events",
                                self.events, "--tile-size", "300x300", "--overlap", "0",
                                "--no-progress", "--timeout", "200", name="ventilate")


def _frames(msg) -> list[bytes]:
    return [f if isinstance(f, bytes) else bytes(memoryview(f)) for f in P.encode(msg)]


def _forge(endpoint: str, msgs: list) -> None:
    """What an intruder on the results port sends: each message, then it leaves."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = 3000
    push.connect(endpoint)
    try:
        for m in msgs:
            push.send_multipart(_frames(m))
    finally:
        push.close()
        ctx.term()


def test_forged_control_messages_from_a_reader_of_the_events_change_nothing(
        small_job, tmp_path, procs, models_ready):
    c = Cluster(procs, tmp_path)
    sink = c.sink()
    c.worker(hold_ms=250)  # slow enough that the job is still running when we strike
    vent = c.ventilate(small_job)
    # Everything the intruder knows it read on the public events port.
    ack = wait_event(c.events, P.MsgType.ACK, lambda a: bool(a.tiles), timeout=120,
                     alive=lambda: vent.poll() is None, what="a tile's ack")
    job, seen_image = ack.job, ack.tiles[0][0]
    progress = wait_event(c.events, P.MsgType.PROGRESS, lambda p: p.job == job, timeout=30)
    assert progress.images_done < IMAGES, "the job ended before the intruder could strike"
    wrong = secrets.token_hex(16)
    _forge(c.results, [
        P.JobEnd(job=job, images=1, tiles=1),  # end it now: records lost, exit 0
        P.JobEnd(job=job, images=progress.images_seen, tiles=1, secret=wrong),
        P.Withdraw(job=job, images=(seen_image,)),  # shorten it: that record never written
        P.ImageInfo(job=job, image="forged", path="/etc/passwd", seq=99,  # alter it
                    error={"type": "forged", "message": "written by a stranger"}),
        P.ImageInfo(job=job, image="ghost", path="ghost.jpg", seq=98, width=9, height=9,
                    tiles=1, secret=wrong),  # stall it: an image that never completes
        P.JobStart(job=job, model={"ref": "evil@1", "labels": []}, tiling={}, merge={},
                   secret=wrong),
    ])
    assert procs.wait(vent, 240) == 0, procs.log(vent)
    assert f"{IMAGES} images, 0 failed" in procs.log(vent)
    recs = [json.loads(x) for x in c.out.read_text().splitlines() if x.strip()]
    assert sorted(r["image"] for r in recs) == sorted(
        str(small_job / f"img{i}.jpg") for i in range(IMAGES))
    assert {r["job"] for r in recs} == {job}
    assert all(r["error"] is None for r in recs)
    log = procs.log(sink)
    assert len(re.findall(r"without its secret: refused", log)) == 6, log
    status = wait_event(c.events, P.MsgType.SINK_STATUS, lambda s: True, timeout=10)
    assert status.bad_messages >= 6


def test_the_job_secret_never_leaves_the_sink(tmp_path, procs):
    """Playing the ventilator (and a worker) with a known secret: no frame the sink
    publishes, to any subscriber, and no line it logs holds it, even when a control
    message comes with a wrong secret or a wrong count."""
    c = Cluster(procs, tmp_path)
    sink = c.sink()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(c.events)
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    push.connect(c.results)
    heard: list[bytes] = []
    secret = P.new_job_secret()
    try:
        deadline = time.monotonic() + 30  # the sink is up and we are subscribed
        while not heard and time.monotonic() < deadline:
            if sub.poll(200):
                heard.extend(sub.recv_multipart())
        assert heard, "no event from the sink"
        model = {"ref": "toy@1", "labels": ["cat"], "name": "toy"}
        merge = {"method": "nmm", "metric": "ios", "threshold": 0.5, "class_agnostic": False}
        msgs = [
            P.JobStart(job="j1", model=model, tiling={"tile_size": [4, 4]}, merge=merge,
                       secret=secret),
            P.JobStart(job="j1", model=model, tiling={}, merge=merge, secret="x" + secret),
            P.ImageInfo(job="j1", image="a", path="a.jpg", seq=0, width=8, height=8, tiles=1,
                        hash="blake2b:aa", secret=secret),
            P.ImageInfo(job="j1", image="b", path="b.jpg", seq=1, width=8, height=8, tiles=1,
                        secret=secret[:-1]),
            P.Result(job="j1", image="a", index=0, worker="w", model="toy@1",
                     detections=Detections.of(np.array([[1, 1, 5, 5]]), [0.9], [0])),
            P.JobEnd(job="j1", images=2, tiles=2, secret=secret),  # a wrong count
            P.Withdraw(job="j1", images=("zz",), secret=secret.upper()),
            P.JobEnd(job="j1", images=1, tiles=1, secret=secret),
        ]
        for m in msgs:
            push.send_multipart(_frames(m))
        done = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (done is None or time.monotonic() < done + 2):
            if sub.poll(200):
                frames = sub.recv_multipart()
                heard.extend(frames)
                if frames[0] == P.MsgType.JOB_DONE.tag and done is None:
                    done = time.monotonic()
        assert done is not None, "the job did not finish"
    finally:
        sub.close()
        push.close()
        ctx.term()
    for needle in (secret.encode(), bytes.fromhex(secret), secret.upper().encode()):
        assert not any(needle in f for f in heard)
    procs.stop(sink)
    log = procs.log(sink)
    assert "counts 2 images, 1 were announced" in log, log
    assert secret not in log and secret.upper() not in log and secret[:-1] not in log
    assert secret not in c.out.read_text()


def test_a_ventilator_takes_no_job_done_without_its_jobs_proof(small_job, tmp_path, procs):
    """Playing the sink: a JobDone for the job's id that is not made with the job's secret
    (a job of that id started by someone else on a restarted sink) does not end
    ``ventilate``; the real one does."""
    c = Cluster(procs, tmp_path)
    ctx = zmq.Context()
    pull, pub = ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
    for s in (pull, pub):
        s.linger = 0
        s.bind("tcp://127.0.0.1:0")
    c.results, c.events = (s.getsockopt_string(zmq.LAST_ENDPOINT) for s in (pull, pub))
    try:
        vent = c.ventilate(small_job)
        start = None
        deadline = time.monotonic() + 60
        while start is None and time.monotonic() < deadline:
            if pull.poll(200):
                msg = P.decode(pull.recv_multipart())
                if isinstance(msg, P.JobStart):
                    start = msg
        assert start is not None and len(start.secret) == 32, procs.log(vent)
        done = {"job": start.job, "images": IMAGES, "failed": 0, "tiles": 24,
                "detections": 0, "seconds": 1.0, "out": "x"}
        forged = P.JobDone(**done, proof=P.job_proof("not-" + start.secret, start.job,
                                                     IMAGES, 0))
        for _ in range(20):  # 2 s of forged word, as the sink re-publishes it
            pub.send_multipart(_frames(forged))
            time.sleep(0.1)
        assert vent.poll() is None, procs.log(vent)
        assert "without the job's proof" in procs.log(vent)
        real = P.JobDone(**done, proof=P.job_proof(start.secret, start.job, IMAGES, 0))
        deadline = time.monotonic() + 30
        while vent.poll() is None and time.monotonic() < deadline:
            pub.send_multipart(_frames(real))
            time.sleep(0.1)
        assert vent.poll() == 0, procs.log(vent)
    finally:
        pull.close()
        pub.close()
        ctx.term()
