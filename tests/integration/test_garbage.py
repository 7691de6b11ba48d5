"""Garbage on the sockets during a job: counted, logged, and the job's results unchanged."""

from __future__ import annotations

import json
import re
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from tests.conftest import free_port
from zmqvision import protocol as P

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

MODEL = "ssd-mobilenetv2-oid"


def garbage_messages(rng: np.random.Generator, n: int) -> list[list[bytes]]:
    """Random frames, wrong versions, truncated multiparts, wrong header types, tiles and
    results of unknown jobs: everything a confused or hostile peer might send."""
    out = []
    good_result = P.encode(P.Result(job="nojob", image="x", index=0, worker="evil",
                                    model="m@1", detections=P.Detections.empty()))
    for i in range(n):
        k = i % 7
        if k == 0:
            out.append([rng.bytes(int(rng.integers(0, 64))) for _ in range(rng.integers(1, 5))])
        elif k == 1:
            out.append([b"zv.result", msgpack.packb({"v": 2, "job": "j"})])
        elif k == 2:
            out.append([b"zv.tile"])  # truncated: no header, no pixels
        elif k == 3:
            out.append([b"zv.image", msgpack.packb({"v": 1, "job": 5, "image": None})])
        elif k == 4:
            out.append([b"zv.tile", msgpack.packb({"v": 1, "shape": [300, 300, 3]}),
                        b"\0" * 10])
        elif k == 5:
            out.append([bytes(f) if not isinstance(f, bytes) else f for f in good_result])
        else:
            out.append([b"zv.heartbeat", b"\xff" * 20])
    return out


def _spray(endpoint: str, bind: bool, msgs, stop: threading.Event, sent: list[int]):
    """At the sink: a PUSH connected to its PULL. At a worker: a ROUTER the worker connects
    to as to a ventilator; the worker's first message (its credit) names it."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER if bind else zmq.PUSH)
    s.linger = 0
    s.sndhwm = 100
    prefix: list[bytes] = []
    try:
        (s.bind if bind else s.connect)(endpoint)
        if bind:
            while not stop.is_set() and not prefix:
                if s.poll(100):
                    prefix = [s.recv_multipart()[0]]
        for m in msgs:
            if stop.is_set():
                break
            while not stop.is_set():
                try:
                    s.send_multipart(prefix + m, flags=zmq.NOBLOCK)
                    sent[0] += 1
                    break
                except zmq.Again:
                    s.poll(50, zmq.POLLOUT)
    finally:
        s.close(linger=0)
        ctx.term()


def test_garbage_at_sink_and_worker_sockets(image_dir, tmp_path, procs, models_ready):
    clean = tmp_path / "clean.jsonl"
    tiles, results, events, junk = (f"tcp://127.0.0.1:{free_port()}" for _ in range(4))

    def job(out):
        sink = procs.start("sink", "--out", str(out), "--bind-results", results,
                           "--bind-events", events, name="sink")
        worker = procs.start("worker", "--model", MODEL, "--tiles", f"{tiles},{junk}",
                             "--results", results, name="worker")
        return sink, worker

    sink, worker = job(clean)
    vent = procs.start("ventilate", str(image_dir), "--model", MODEL, "--bind", tiles,
                       "--sink-results", results, "--sink-events", events, "--no-progress")
    assert procs.wait(vent, 240) == 0, procs.log(vent)
    procs.stop(worker)
    procs.stop(sink)

    dirty = tmp_path / "dirty.jsonl"
    sink, worker = job(dirty)
    rng = np.random.default_rng(7)
    stop = threading.Event()
    at_sink, at_worker = [0], [0]
    sprayers = [
        threading.Thread(target=_spray, args=(results, False, garbage_messages(rng, 700), stop,
                                              at_sink)),
        threading.Thread(target=_spray, args=(junk, True, garbage_messages(rng, 300), stop,
                                              at_worker)),
    ]
    for t in sprayers:
        t.start()
    try:
        vent = procs.start("ventilate", str(image_dir), "--model", MODEL, "--bind", tiles,
                           "--sink-results", results, "--sink-events", events,
                           "--no-progress")
        assert procs.wait(vent, 240) == 0, procs.log(vent)
        deadline = time.monotonic() + 30
        while (at_sink[0] < 700 or at_worker[0] < 300) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in sprayers:
            t.join(10)
    assert at_sink[0] == 700 and at_worker[0] == 300

    # The sink counts what it dropped and says so in its status events.
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, P.MsgType.SINK_STATUS.tag)
    sub.connect(events)
    try:
        bad = None
        deadline = time.monotonic() + 10
        while bad is None and time.monotonic() < deadline:
            if sub.poll(500):
                msg = P.decode(sub.recv_multipart())
                bad = msg.bad_messages
    finally:
        sub.close(linger=0)
        ctx.term()
    # Every garbage message at the sink but the well-formed result of an unknown job is
    # malformed; those few results wait (bounded) for a job that never comes.
    assert bad is not None and bad >= 700 - 700 // 7 - 1
    procs.stop(worker)
    procs.stop(sink)
    worker_log = procs.log(worker)
    assert re.search(r"dropped a bad message \(#\d+\)", worker_log), worker_log[-2000:]

    def norm(path):
        lines = path.read_text().splitlines()
        recs = sorted((json.loads(x) for x in lines), key=lambda r: r["image"])
        return [(r["image"], r["error"], r["detections"]) for r in recs]

    assert norm(dirty) == norm(clean)
    assert len(norm(clean)) == 4
