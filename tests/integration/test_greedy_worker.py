"""A greedy worker (``Ready(1000000)``, heartbeats, never a result) must not stall a job
(issue 16, item 5). Before: it took every tile, the job froze until the 120 s leases ran
out while the real workers sat idle, and it was handed the re-sent tiles again."""

from __future__ import annotations

import re
import threading
import time

import pytest
import zmq

from tests.integration.test_reliability import MODEL, Cluster, comparable, job_seconds, records
from zmqvision import protocol as P
from zmqvision.dispatch import MAX_WORKER_HELD
from zmqvision.models import resolve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class GreedyWorker(threading.Thread):
    """A DEALER that offers a million credits (again every beat), heartbeats like a worker
    with a million requests, takes every tile it is sent and answers none."""

    def __init__(self, tiles: str) -> None:
        super().__init__(daemon=True)
        self.tiles_endpoint = tiles
        # The job's model, claimed (tiles go only to workers that serve their model).
        self.model = resolve(MODEL).ref
        self.stop = threading.Event()
        self.tiles = 0

    def run(self) -> None:
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(self.tiles_endpoint)
        try:
            next_beat = 0.0
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    dealer.send_multipart(P.encode(P.Ready("greedy", 1_000_000)))
                    dealer.send_multipart(P.encode(P.Heartbeat(
                        worker="greedy", host="nowhere", pid=1, device="CPU", model=self.model,
                        tiles_done=0, tiles_failed=0, tiles_per_s=0.0, in_flight=0, queue=0,
                        uptime=1.0, period=0.5, requests=1_000_000)))
                    next_beat = now + 0.5
                if dealer.poll(100):
                    while dealer.poll(0):
                        dealer.recv_multipart()
                        self.tiles += 1
        finally:
            dealer.close()
            ctx.term()


def test_a_greedy_worker_neither_stalls_the_job_nor_gets_tiles_again(job_dir, tmp_path,
                                                                     procs, models_ready):
    c = Cluster(procs, tmp_path)
    c.sink()
    worker = c.worker()
    vent = c.ventilate(job_dir)
    assert procs.wait(vent, 300) == 0, procs.log(vent)
    alone = job_seconds(procs.log(vent))

    greedy = GreedyWorker(c.tiles)
    greedy.start()
    try:
        vent = c.ventilate(job_dir)
        assert procs.wait(vent, 300) == 0, procs.log(vent)
        with_greedy = job_seconds(procs.log(vent))
        log = procs.log(vent)
    finally:
        greedy.stop.set()
        greedy.join(10)
    assert greedy.tiles > 0, "the greedy worker was never given a tile: nothing was tested"
    assert re.search(r"worker greedy \(\S+\) held \d+ tiles", log) and "quarantine #1" in log, log
    assert with_greedy <= 2 * alone, (with_greedy, alone, greedy.tiles)
    assert greedy.tiles <= MAX_WORKER_HELD, greedy.tiles  # a bounded helping, never again
    assert worker.poll() is None
    recs = records(c.out)
    by_job: dict[str, list] = {}
    for r in recs:
        by_job.setdefault(r["job"], []).append(r)
    assert sorted(len(v) for v in by_job.values()) == [12, 12]
    first, second = (tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    for path, rs in zip((first, second), by_job.values(), strict=True):
        path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rs))
    assert comparable(first) == comparable(second)
