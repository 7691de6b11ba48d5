"""The sink's bookkeeping, driven with real encoded messages (the socket loop is covered by
the integration tests): completion, duplicates, early results, errors, events."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zmqvision import protocol as P
from zmqvision.boxes import Detections
from zmqvision.sink import Sink, SinkConfig

MODEL = {"ref": "toy@1", "labels": ["cat", "dog"], "name": "toy"}
MERGE = {"method": "nmm", "metric": "ios", "threshold": 0.5, "class_agnostic": False}


class Harness:
    def __init__(self, tmp_path, fmt="jsonl", cache=None, append=False):
        self.out = tmp_path / ("out.json" if fmt == "coco" else "out.jsonl")
        self.events: list = []
        self.sink = Sink(SinkConfig(out=str(self.out), format=fmt, append=append),
                         self._publish, cache=cache)

    def _publish(self, frames):
        self.events.append(P.decode([bytes(memoryview(f)) if not isinstance(f, bytes) else f
                                     for f in frames]))

    def send(self, msg):
        frames = [f if isinstance(f, bytes) else bytes(memoryview(f)) for f in P.encode(msg)]
        self.sink.handle(frames)

    def records(self):
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    def done(self):
        return [e for e in self.events if isinstance(e, P.JobDone)]


def result(image, index, boxes, scores, labels, model="toy@1", error=None, job="j"):
    return P.Result(job=job, image=image, index=index, worker="w", model=model,
                    detections=Detections.of(boxes, scores, labels), error=error)


def start(h, job="j"):
    h.send(P.JobStart(job=job, model=MODEL, tiling={}, merge=MERGE))


def test_image_completes_when_all_tiles_answered_and_border_duplicates_merge(tmp_path):
    h = Harness(tmp_path)
    start(h)
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=200, height=100, tiles=2))
    # One cat cut by the tile border: a half box in each tile, and a whole one in tile 1.
    h.send(result("a", 0, [[80, 10, 100, 50]], [0.8], [0]))
    assert h.records() == []
    h.send(result("a", 1, [[100, 10, 120, 50], [80, 10, 120, 50]], [0.7, 0.9], [0, 0]))
    recs = h.records()
    assert len(recs) == 1
    assert recs[0]["image"] == "a.jpg" and recs[0]["error"] is None
    assert [d["label"] for d in recs[0]["detections"]] == ["cat"]
    assert recs[0]["detections"][0]["box"] == [80, 10, 120, 50]
    h.send(P.JobEnd(job="j", images=1, tiles=2))
    done = h.done()
    assert len(done) == 1 and done[0].images == 1 and done[0].failed == 0


def test_duplicate_tiles_are_merged_once_and_late_ones_ignored(tmp_path):
    h = Harness(tmp_path)
    start(h)
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=2))
    h.send(result("a", 0, [[0, 0, 5, 5]], [0.9], [0]))
    h.send(result("a", 0, [[1, 1, 2, 2]], [0.99], [1]))  # re-sent tile: first answer wins
    h.send(result("a", 1, [], [], []))
    h.send(result("a", 1, [[1, 1, 2, 2]], [0.99], [1]))  # late duplicate after completion
    h.send(P.JobEnd(job="j", images=1, tiles=2))
    recs = h.records()
    assert len(recs) == 1
    assert [d["score"] for d in recs[0]["detections"]] == pytest.approx([0.9])


def test_results_before_their_image_announcement_wait(tmp_path):
    h = Harness(tmp_path)
    start(h)
    h.send(result("a", 0, [[0, 0, 5, 5]], [0.9], [1]))
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=1))
    recs = h.records()
    assert len(recs) == 1 and recs[0]["detections"][0]["label"] == "dog"


def test_results_before_the_job_announcement_wait(tmp_path):
    h = Harness(tmp_path)
    h.send(result("a", 0, [[0, 0, 5, 5]], [0.9], [1]))
    start(h)
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=1))
    assert len(h.records()) == 1


def test_failed_image_and_failed_tile_make_error_records(tmp_path):
    h = Harness(tmp_path)
    start(h)
    h.send(P.ImageInfo(job="j", image="bad", path="bad.jpg", seq=0,
                       error={"type": "corrupt_image", "message": "truncated"}))
    h.send(P.ImageInfo(job="j", image="b", path="b.jpg", seq=1, width=10, height=10, tiles=2))
    h.send(result("b", 0, [[0, 0, 5, 5]], [0.9], [0]))
    h.send(result("b", 1, [], [], [], error={"type": "inference_failed", "message": "boom"}))
    h.send(P.JobEnd(job="j", images=2, tiles=2))
    recs = {r["image"]: r for r in h.records()}
    assert recs["bad.jpg"]["error"]["type"] == "corrupt_image"
    assert recs["bad.jpg"]["detections"] == []
    assert recs["b.jpg"]["error"]["type"] == "inference_failed"
    assert "boom" in recs["b.jpg"]["error"]["message"]
    assert recs["b.jpg"]["detections"] == []
    assert h.done()[0].failed == 2


def test_results_of_another_model_are_never_merged(tmp_path):
    h = Harness(tmp_path)
    start(h)
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=1))
    h.send(result("a", 0, [[0, 0, 5, 5]], [0.9], [0], model="other@2"))
    rec = h.records()[0]
    assert rec["error"]["type"] == "model_mismatch" and rec["detections"] == []


def test_garbage_is_counted_not_fatal(tmp_path):
    h = Harness(tmp_path)
    start(h)
    for frames in ([b"junk"], [b"zv.result", b"\x00"], [], [b"zv.tile", b"\x80"]):
        h.sink.handle(frames)
    h.send(P.Tile(job="j", image="a", index=0, box=(0, 0, 1, 1), scale=1.0, model="toy@1",
                  pixels=np.zeros((1, 1, 3), np.uint8)))  # valid, but not for a sink
    h.send(P.ImageInfo(job="zzz", image="a", path="a", seq=0, width=1, height=1, tiles=1))
    assert h.sink.bad.count == 6
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=1))
    h.send(result("a", 0, [], [], []))
    h.send(P.JobEnd(job="j", images=1, tiles=1))
    assert len(h.records()) == 1 and len(h.done()) == 1


def test_progress_snapshots_and_job_done_republished(tmp_path):
    h = Harness(tmp_path)
    start(h)
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=1))
    h.sink.publish_progress(force=True)
    p = [e for e in h.events if isinstance(e, P.Progress)][-1]
    assert (p.images_seen, p.images_done, p.images_total, p.done) == (1, 0, None, False)
    h.send(result("a", 0, [], [], []))
    h.send(P.JobEnd(job="j", images=1, tiles=1))
    n = len(h.done())
    h.sink.publish_finished()
    assert len(h.done()) == n + 1  # late subscribers still hear it


def test_empty_job_completes(tmp_path):
    h = Harness(tmp_path)
    start(h)
    h.send(P.JobEnd(job="j", images=0, tiles=0))
    assert h.done()[0].images == 0


def test_coco_output(tmp_path):
    h = Harness(tmp_path, fmt="coco")
    start(h)
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=1))
    h.send(P.ImageInfo(job="j", image="x", path="x.jpg", seq=1,
                       error={"type": "empty_file", "message": "0 bytes"}))
    h.send(result("a", 0, [[1, 2, 5, 8]], [0.75], [1]))
    h.send(P.JobEnd(job="j", images=2, tiles=1))
    coco = json.loads(h.out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert len(coco["images"]) == 2
    (ann,) = coco["annotations"]
    assert ann["bbox"] == [1, 2, 4, 6] and ann["category_id"] == 2
    assert coco["errors"][0]["type"] == "empty_file"


def test_early_results_for_images_never_announced_are_bounded(tmp_path, monkeypatch):
    from zmqvision.sink import jobs

    monkeypatch.setattr(jobs, "MAX_EARLY_RESULTS", 50)
    h = Harness(tmp_path)
    start(h)
    for i in range(200):  # a confused or hostile sender: results for images nobody announced
        h.send(result(f"ghost{i}", 0, [], [], []))
    job = h.sink.jobs["j"]
    assert job.early_count <= 50 and sum(len(v) for v in job.early.values()) == job.early_count
    assert h.sink.bad.count >= 150
    # The most recent early results still wait for their announcement and are merged.
    h.send(P.ImageInfo(job="j", image="ghost199", path="g.jpg", seq=0, width=10, height=10,
                       tiles=1))
    assert [r["id"] for r in h.records()] == ["ghost199"]


def test_a_repeat_of_a_written_image_is_acked_not_written_again(tmp_path):
    h = Harness(tmp_path)
    start(h)
    info = P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=1)
    h.send(info)
    h.send(result("a", 0, [], [], []))
    h.sink.flush_acks(force=True)
    h.send(info)  # announced again (the ventilator did not hear the ack)
    h.send(result("a", 0, [], [], []))
    h.sink.flush_acks(force=True)
    assert len(h.records()) == 1
    acked = [img for e in h.events if isinstance(e, P.Ack) for img in e.images]
    assert acked.count("a") >= 2


def test_records_say_which_settings_produced_them(tmp_path):
    h = Harness(tmp_path)
    tiling = {"tile_size": [256, 256], "overlap": 0.25, "full_pass": True,
              "input_size": [640, 640]}
    h.send(P.JobStart(job="j", model=MODEL, tiling=tiling, merge=MERGE,
                      options={"score_threshold": 0.4}))
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=10, height=10, tiles=1))
    h.send(result("a", 0, [], [], []))
    (rec,) = h.records()
    assert rec["settings"] == {"tiling": tiling, "merge": MERGE, "score_threshold": 0.4}


def test_results_are_cached_as_images_complete_but_never_failures(tmp_path):
    """Successes are saved; no failure is (a failed tile, a corrupt file: a record is
    never "cached" beside an error, issue 17.8); a cached image's record is written at
    once, marked."""
    from zmqvision.cache import ResultCache, job_fingerprint
    from zmqvision.cache.sqlite_store import SqliteStore

    cache = ResultCache(SqliteStore(tmp_path / "c.sqlite3"))
    h = Harness(tmp_path, cache=cache)
    start(h)
    fp = job_fingerprint(P.JobStart(job="j", model=MODEL, tiling={}, merge=MERGE))
    h.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=200, height=100,
                       tiles=1, hash="blake2b:aa"))
    h.send(result("a", 0, [[1, 2, 3, 4]], [0.75], [1]))
    h.send(P.ImageInfo(job="j", image="b", path="b.jpg", seq=1, width=200, height=100,
                       tiles=1, hash="blake2b:bb"))
    h.send(result("b", 0, [], [], [], error={"type": "inference_failed", "message": "x"}))
    h.send(P.ImageInfo(job="j", image="c", path="c.jpg", seq=2, hash="blake2b:cc",
                       error={"type": "corrupt_image", "message": "c.jpg: damaged JPEG"}))
    h.send(P.ImageInfo(job="j", image="d", path="d.txt", seq=3, hash="blake2b:dd",
                       error={"type": "unsupported_format", "message": "d.txt: text"}))
    hit = cache.guard.store  # nothing is written before the batch is flushed
    assert hit.stats()["entries"] == 0
    h.sink.flush_acks(force=True)
    assert hit.stats()["entries"] == 1
    a = cache.lookup(fp, "blake2b:aa", "toy@1")
    assert a.detections.boxes.tolist() == [[1, 2, 3, 4]] and a.tiles == 1
    assert cache.lookup(fp, "blake2b:bb", "toy@1") is None
    assert cache.lookup(fp, "blake2b:cc", "toy@1") is None

    h.send(P.ImageInfo(job="j", image="e", path="copy-of-a.jpg", seq=4, width=200, height=100,
                       hash="blake2b:aa", cached=P.Cached(tiles=1, detections=a.detections)))
    h.send(P.JobEnd(job="j", images=5, tiles=2))
    recs = {r["image"]: r for r in h.records()}
    assert recs["copy-of-a.jpg"]["cached"] is True and recs["a.jpg"]["cached"] is False
    assert recs["copy-of-a.jpg"]["detections"] == recs["a.jpg"]["detections"]
    assert recs["copy-of-a.jpg"]["tiles"] == 1
    assert h.done()[0].cached == 1
    assert [e for e in h.events if isinstance(e, P.Progress)][-1].images_cached == 1
    h.sink.close()
