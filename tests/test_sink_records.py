"""Record delivery for library callers (JobStart ``options["records"]``) and Withdraw,
driven through the sink with real encoded messages."""

from __future__ import annotations

import json

import pytest

from tests.test_sink import MERGE, MODEL, Harness, result
from zmqvision import protocol as P
from zmqvision import results


def start(h, job="j", records=None):
    options = {} if records is None else {"records": records}
    h.send(P.JobStart(job=job, model=MODEL, tiling={}, merge=MERGE, options=options))


def image(name, job="j", tiles=1, seq=0):
    return P.ImageInfo(job=job, image=name, path=f"{name}.jpg", seq=seq, width=100,
                       height=100, tiles=tiles)


def records_on_pub(h, job=None):
    return [e for e in h.events if isinstance(e, P.Record) and job in (None, e.job)]


def acked_images(h, job):
    return [i for e in h.events if isinstance(e, P.Ack) and e.job == job for i in e.images]


def test_both_publishes_exactly_the_line_it_writes(tmp_path):
    h = Harness(tmp_path)
    start(h, records="both")
    h.send(image("a"))
    h.send(result("a", 0, [[1, 2, 30, 40]], [0.75], [1]))
    (rec,) = records_on_pub(h)
    assert (rec.job, rec.image) == ("j", "a")
    assert h.out.read_bytes() == rec.json + b"\n"
    assert rec.record()["detections"][0]["label"] == "dog"


def test_publish_writes_nothing_and_sends_the_line_write_would_have(tmp_path):
    h = Harness(tmp_path)
    start(h, job="w")
    start(h, job="p", records="publish")
    for job in ("w", "p"):
        h.send(image("a", job=job))
        h.send(result("a", 0, [[1, 2, 30, 40]], [0.75], [1], job=job))
    (written,) = h.records()
    assert written["job"] == "w"  # the publish job's record is not in the file
    (rec,) = records_on_pub(h)
    assert rec.job == "p"
    assert rec.json == results.record_json({**written, "job": "p"})
    h.send(P.JobEnd(job="p", images=1, tiles=1))
    (done,) = [d for d in h.done() if d.job == "p"]
    assert done.images == 1 and done.out == ""


def test_a_published_image_is_acked_right_after_its_record_without_a_flush(tmp_path):
    h = Harness(tmp_path)
    start(h, records="publish")
    h.send(image("a"))
    h.send(result("a", 0, [], [], []))
    kinds = [type(e) for e in h.events]
    at = kinds.index(P.Record)
    assert kinds[at + 1] is P.Ack and h.events[at + 1].images == ("a",)
    # A written image waits for the sync at the next flush.
    start(h, job="w", records="both")
    h.send(image("b", job="w"))
    h.send(result("b", 0, [], [], [], job="w"))
    assert acked_images(h, "w") == []
    h.sink.flush_acks(force=True)
    assert acked_images(h, "w") == ["b"]


def test_an_unknown_delivery_refuses_the_job(tmp_path):
    h = Harness(tmp_path)
    start(h, records="email")
    assert h.sink.bad.count == 1 and "j" not in h.sink.jobs
    h.send(image("a"))  # for a job that was refused
    assert h.sink.bad.count == 2
    assert h.records() == [] and records_on_pub(h) == []


def test_a_published_image_announced_again_is_computed_and_published_again(tmp_path):
    h = Harness(tmp_path)
    start(h, records="publish")
    h.send(image("a"))
    h.send(result("a", 0, [[1, 1, 9, 9]], [0.9], [0]))
    h.send(result("a", 0, [[1, 1, 9, 9]], [0.9], [0]))  # a late copy: dropped, not bad
    assert len(records_on_pub(h)) == 1 and h.sink.bad.count == 0
    h.send(image("a"))  # a caller resubmits
    assert "a" in h.sink.jobs["j"].images
    h.send(result("a", 0, [[2, 2, 8, 8]], [0.8], [1]))
    first, second = records_on_pub(h)
    assert second.record()["detections"][0]["label"] == "dog"
    assert first.json != second.json


def test_a_stream_job_that_never_ends_holds_nothing_per_completed_image(tmp_path):
    from zmqvision.sink.forgotten import Forgotten

    h = Harness(tmp_path)
    start(h, records="publish")
    sink = h.sink
    sink.forgotten = Forgotten(limit=100)  # late results are dropped for the last 100
    for i in range(2000):
        h.send(image(f"i{i}", seq=i, tiles=2))
        h.send(result(f"i{i}", 0, [], [], []))
        h.send(result(f"i{i}", 1, [], [], []))
        if i % 200 == 0:
            sink.flush_acks(force=True)
    job = sink.jobs["j"]
    assert job.images == {} and job.early == {} and job.early_count == 0
    assert "j" not in sink.journal.written  # no per-job written-set
    assert len(sink.forgotten) == 100
    assert len(records_on_pub(h)) == 2000 and h.records() == []
    assert job.progress().images_done == 2000
    h.events.clear()
    sink.flush_acks(force=True)
    assert sink.acks.pending == {}


def test_withdrawn_images_are_forgotten_and_their_late_results_dropped_quietly(tmp_path):
    h = Harness(tmp_path)
    start(h, records="both")
    h.send(image("a", tiles=3))
    h.send(result("a", 0, [[1, 1, 5, 5]], [0.9], [0]))
    h.send(result("a", 1, [], [], []))
    h.send(result("b", 0, [], [], []))  # early: b is not announced yet
    h.send(image("c", seq=1))
    h.send(P.Withdraw(job="j", images=("a", "b")))
    job = h.sink.jobs["j"]
    p = job.progress()
    assert (p.images_seen, p.tiles_seen, p.tiles_done) == (1, 1, 0)
    assert "a" not in job.images and job.early == {}
    h.send(result("a", 2, [], [], []))  # late: dropped, not bad, no record
    h.send(result("b", 0, [], [], []))
    assert h.sink.bad.count == 0 and job.early == {}
    h.send(result("c", 0, [], [], []))
    h.send(P.JobEnd(job="j", images=1, tiles=1))  # counts only what was not withdrawn
    assert [r["id"] for r in h.records()] == ["c"]
    assert [r.image for r in records_on_pub(h)] == ["c"]
    (done,) = h.done()
    assert (done.images, done.tiles) == (1, 1)


def test_a_withdrawn_image_announced_again_is_a_new_image(tmp_path):
    h = Harness(tmp_path)
    start(h, records="publish")
    h.send(image("a", tiles=2))
    h.send(result("a", 0, [[1, 1, 5, 5]], [0.9], [0]))
    h.send(P.Withdraw(job="j", images=("a",)))
    h.send(image("a", tiles=2))  # resubmitted
    assert h.sink.jobs["j"].images["a"].parts == {}  # nothing of the withdrawn one
    h.send(result("a", 0, [], [], []))
    h.send(result("a", 1, [], [], []))
    (rec,) = records_on_pub(h)
    assert rec.record()["detections"] == []


def test_withdraw_takes_back_no_written_record_and_knows_its_jobs(tmp_path):
    h = Harness(tmp_path)
    start(h)
    h.send(image("a"))
    h.send(result("a", 0, [], [], []))
    h.send(P.Withdraw(job="j", images=("a",)))  # too late: it is in the journal
    h.send(image("a"))  # announced again: acked as written, not written twice
    h.sink.flush_acks(force=True)
    assert len(h.records()) == 1 and acked_images(h, "j").count("a") == 2
    h.send(P.Withdraw(job="nobody", images=("x",)))
    assert h.sink.bad.count == 1
    h.send(P.JobEnd(job="j", images=1, tiles=1))
    h.send(P.Withdraw(job="j", images=("a",)))  # a finished job: too late, not bad
    assert h.sink.bad.count == 1


@pytest.mark.parametrize("mode", ["write", "both"])
def test_written_jobs_still_write_every_record_once(tmp_path, mode):
    h = Harness(tmp_path)
    start(h, records=mode)
    h.send(image("a"))
    h.send(result("a", 0, [], [], []))
    h.send(image("a"))
    h.send(result("a", 0, [], [], []))
    assert [json.loads(x)["id"] for x in h.out.read_text().splitlines()] == ["a"]
