"""What a stranger can make the sink hold is bounded in bytes (issue 16, item 7): results
for jobs or images nobody announced, jobs that never start, the roster, forgotten
images, finished jobs. Driven with real encoded messages, as tests/test_sink.py does."""

from __future__ import annotations

import numpy as np

from tests.test_sink import MERGE, MODEL, Harness, result, start
from zmqvision import protocol as P
from zmqvision.boxes import Detections
from zmqvision.sink import core, events, held, roster
from zmqvision.sink.forgotten import PUBLISHED, Forgotten


def boxes_result(job: str, image: str, n: int = 1000) -> P.Result:
    b = np.tile(np.array([[0, 0, 5, 5]], float), (n, 1))
    return P.Result(job=job, image=image, index=0, worker="stranger", model="toy@1",
                    detections=Detections.of(b, np.full(n, 0.5, np.float32),
                                             np.zeros(n, np.int32)))


def test_orphan_results_are_bounded_in_bytes_not_only_in_count(tmp_path):
    """Before: 10,000 results of up to 16 MiB each could wait for jobs never announced."""
    h = Harness(tmp_path)
    size = held.result_bytes(boxes_result("x", "y"))
    for i in range(3 * core.MAX_HELD_RESULT_BYTES // size):
        h.send(boxes_result(f"nobody-{i}", "img"))
    sink = h.sink
    assert sink.held.bytes <= core.MAX_HELD_RESULT_BYTES
    assert sink.held.bytes == sum(held.result_bytes(r) for v in sink.orphans.values()
                                  for r in v)
    assert sink.orphan_count == sum(len(v) for v in sink.orphans.values()) > 0
    assert sink.bad.count > 0
    # The most recent still wait for their job, and are merged once it comes.
    last = f"nobody-{3 * core.MAX_HELD_RESULT_BYTES // size - 1}"
    start(h, job=last)
    h.send(P.ImageInfo(job=last, image="img", path="a.jpg", seq=0, width=10, height=10,
                       tiles=1))
    assert [r["job"] for r in h.records()] == [last]
    assert sink.held.bytes == sum(held.result_bytes(r) for v in sink.orphans.values()
                                  for r in v)


def test_early_results_of_every_job_share_one_budget(tmp_path):
    h = Harness(tmp_path)
    size = held.result_bytes(boxes_result("x", "y"))
    per_job = core.MAX_HELD_RESULT_BYTES // size // 4
    for j in range(12):  # 12 jobs, each with a quarter of the budget in early results
        start(h, job=f"j{j}")
        h.send(P.ImageInfo(job=f"j{j}", image="real", path="a.jpg", seq=0, width=10,
                           height=10, tiles=1))
        for i in range(per_job):
            h.send(boxes_result(f"j{j}", f"ghost{i}"))
    sink = h.sink
    assert sink.held.bytes <= core.MAX_HELD_RESULT_BYTES
    assert sink.held.bytes == sum(j.early_bytes for j in sink.jobs.values())
    assert all(j.early_count == sum(len(v) for v in j.early.values())
               for j in sink.jobs.values())
    # A finished job hands its early results' bytes back.
    job = sink.jobs["j11"]
    h.send(result("real", 0, [], [], [], job="j11"))
    h.send(P.JobEnd(job="j11", images=1, tiles=1))
    assert "j11" not in sink.jobs and job.early_bytes == 0
    assert sink.held.bytes == sum(j.early_bytes for j in sink.jobs.values())


def test_jobs_that_never_start_are_bounded_and_expire(tmp_path, monkeypatch):
    """Before: every forged zv.job was kept for ever."""
    h = Harness(tmp_path)
    sink = h.sink
    fat = {**MODEL, "labels": [f"label {i}" for i in range(1000)]}
    one = held.job_bytes(P.JobStart(job="forged-0", model=fat, tiling={},
                                    merge=MERGE))
    n = 2 * core.MAX_UNSTARTED_JOB_BYTES // one
    for i in range(n):
        h.send(P.JobStart(job=f"forged-{i}", model=fat, tiling={},
                          merge=MERGE))
    assert sink.unstarted_bytes.bytes <= core.MAX_UNSTARTED_JOB_BYTES
    assert len(sink.jobs) == len(sink.unstarted) < n
    assert f"forged-{n - 1}" in sink.jobs and "forged-0" not in sink.jobs
    # A job that got an image has started: it is no longer counted, nor expired.
    h.send(P.ImageInfo(job=f"forged-{n - 1}", image="a", path="a.jpg", seq=0, width=10,
                       height=10, tiles=1))
    assert f"forged-{n - 1}" not in sink.unstarted
    monkeypatch.setattr(core, "UNSTARTED_JOB_S", 0.0)
    sink.tick()
    assert list(sink.jobs) == [f"forged-{n - 1}"]
    assert sink.unstarted_bytes.bytes == 0 and not sink.unstarted


def test_a_job_end_or_withdraw_starts_a_job(tmp_path):
    h = Harness(tmp_path)
    start(h, job="a")
    start(h, job="b")
    assert set(h.sink.unstarted) == {"a", "b"}
    h.send(P.JobEnd(job="a", images=1, tiles=1))
    h.send(P.Withdraw(job="b", images=("x",)))
    assert not h.sink.unstarted and h.sink.unstarted_bytes.bytes == 0


def test_the_roster_keeps_the_most_recent_workers(monkeypatch):
    r = roster.Roster(limit=10)
    for i in range(100):
        r.heard(P.Heartbeat(worker=f"w{i}", host="h", pid=1, device="CPU", model="m",
                            tiles_done=0, tiles_failed=0, tiles_per_s=0.0, in_flight=0,
                            queue=0, uptime=1.0))
    assert list(r.beats) == [f"w{i}" for i in range(90, 100)]


def test_forgotten_images_are_bounded_in_bytes():
    f = Forgotten(limit=1_000_000, max_bytes=100_000)
    for i in range(1000):
        f.add("j", f"{i:04d}" + "x" * 1000, PUBLISHED)
    assert f.bytes <= 100_000 and len(f) < 100
    assert f.get("j", "0999" + "x" * 1000) == PUBLISHED
    assert f.pop("j", "0999" + "x" * 1000) == PUBLISHED
    assert f.bytes == sum(len(k) + 120 for k in f._why)


def test_finished_jobs_republished_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "MAX_FINISHED", 5)
    h = Harness(tmp_path)
    for i in range(20):
        start(h, job=f"j{i}")
        h.send(P.JobEnd(job=f"j{i}", images=0, tiles=0))
    assert list(h.sink.events.finished) == [f"j{i}" for i in range(15, 20)]
