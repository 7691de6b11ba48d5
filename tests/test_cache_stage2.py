"""The result cache for two-stage jobs (issue 21): the key names the second stage, an
entry keeps each object's points and stage-2 answer (never an identity), it travels to
the sink as ``cached.stage2`` of a ``zv.image``, and an entry without it (an older
version's) is a miss. Real SQLite and a real ``redis-server``; the pipeline with real
models is tests/integration/test_cache_stage2.py.
"""

from __future__ import annotations

import time
from dataclasses import replace

import msgpack
import numpy as np
import pytest

from tests.test_cache import HASH, _job
from zmqvision import protocol
from zmqvision.boxes import Detections
from zmqvision.cache import ResultCache, job_fingerprint, open_cache
from zmqvision.cache.entry import Entry, EntryError, decode, encode
from zmqvision.cache.key import entry_key
from zmqvision.cache.sqlite_store import SqliteStore
from zmqvision.models import resolve
from zmqvision.tasks import stage2

pytestmark = pytest.mark.timeout(60)

FACES = Detections(np.array([[1.5, 2.25, 30.125, 40.0], [5.0, 6.0, 70.0, 80.0]]),
                   np.array([0.91003716, 0.5], np.float32), np.array([0, 0], np.int32),
                   np.arange(20, dtype=np.float64).reshape(2, 5, 2) / 3)
EMB = np.random.default_rng(1).standard_normal((2, 192)).astype(np.float32)
EMB /= np.linalg.norm(EMB, axis=1, keepdims=True)
IDENTIFY = protocol.Stage2Cached(points=FACES.landmarks, embeddings=EMB)
PLATES = protocol.Stage2Cached(points=FACES.landmarks[:, :4], texts=("京A12345", ""),
                               text_scores=(0.98765432101, 0.0))


def _two_stage(kind: str, **stage2_changes) -> protocol.JobStart:
    first = stage2.KINDS[kind][0]
    s2 = stage2.plan(kind, first).to_json() | stage2_changes
    start = _job()
    return protocol.JobStart(job="j", model=resolve(first).describe(), tiling=start.tiling,
                             merge=start.merge, options={**start.options, "stage2": s2})


# ------------------------------------------------------------------------------- key


def test_the_second_stage_is_in_the_key_and_the_gallery_is_not():
    """A plate job, an ocr job and another reader never share entries; a one-stage job's
    key is what it always was; the gallery and its threshold change no entry."""
    plates = job_fingerprint(_two_stage("plates"))
    one_stage = _two_stage("plates")
    del one_stage.options["stage2"]
    assert job_fingerprint(one_stage) != plates  # the detector alone: another key
    start = _two_stage("plates")
    as_ocr = protocol.JobStart(job="j", model=start.model, tiling=start.tiling,
                               merge=start.merge,
                               options={**start.options,
                                        "stage2": {**start.options["stage2"], "kind": "ocr",
                                                   "model": resolve("ppocr-v4-rec").ref}})
    assert job_fingerprint(as_ocr) != plates  # another reader on the same detector
    assert job_fingerprint(_two_stage("plates", model="plates-rec@0.0.1")) != plates
    faces = job_fingerprint(_two_stage("identify"))
    assert job_fingerprint(_two_stage("identify", gallery="sqlite:///elsewhere.db",
                                      threshold=0.3)) == faces
    assert job_fingerprint(_two_stage("identify", model="mobilefacenet@9")) != faces
    # a detection job's key does not move (entries saved before stay hits)
    assert job_fingerprint(_job()) == job_fingerprint(_job())
    from zmqvision.cache.key import fingerprint

    s = _job()
    assert job_fingerprint(s) == fingerprint(s.model, s.tiling, s.merge, None)


def test_the_second_models_file_is_in_the_key(monkeypatch):
    """The catalog's description of the second model (file hash, input size, charset)
    is in the key: a reader whose file changed under the same ref is another key."""
    from zmqvision.models import CATALOG

    before = job_fingerprint(_two_stage("plates"))
    spec = CATALOG["plates-rec"]
    monkeypatch.setitem(CATALOG, "plates-rec", replace(spec, sha256="0" * 64))
    assert job_fingerprint(_two_stage("plates")) != before


# ------------------------------------------------------------------------------- entry


@pytest.mark.parametrize("s2", [IDENTIFY, PLATES], ids=["identify", "plates"])
def test_entry_with_stage2_round_trips_exactly(s2):
    dets = Detections(FACES.boxes, FACES.scores, FACES.labels)
    e = decode(encode(Entry(key="k", model="m@1", width=9, height=8, tiles=1,
                            detections=dets, stage2=s2)), "k")
    assert e.stage2 is not None and e.stage2.answer == s2.answer
    assert e.stage2.points.dtype == np.float64
    assert e.stage2.points.tobytes() == s2.points.tobytes()
    if s2.embeddings is not None:
        assert e.stage2.embeddings.tobytes() == s2.embeddings.tobytes()
    assert e.stage2.texts == s2.texts and e.stage2.text_scores == s2.text_scores


def test_entry_of_an_image_without_objects():
    for s2 in (protocol.Stage2Cached(points=np.zeros((0, 5, 2))),
               protocol.Stage2Cached(points=np.zeros((0, 4, 2)), texts=(), text_scores=())):
        e = decode(encode(Entry(key="k", model="m@1", width=9, height=8, tiles=1,
                                detections=Detections.empty(), stage2=s2)), "k")
        assert e.stage2.answer == s2.answer and e.stage2.points.shape == s2.points.shape


def _packed_s2(**changes) -> bytes:
    dets = Detections(FACES.boxes, FACES.scores, FACES.labels)
    m = msgpack.unpackb(encode(Entry(key="k", model="m@1", width=9, height=8, tiles=1,
                                     detections=dets, stage2=PLATES)), raw=False)
    m["s2"].update(changes)
    return msgpack.packb(m, use_bin_type=True)


@pytest.mark.parametrize("changes", [
    {"texts": ["one"]}, {"text_scores": [0.5, 1.5]}, {"text_scores": [0.5, float("nan")]},
    {"texts": ["a", 3]}, {"points": 5}, {"points": 0}, {"frame": b""},
    {"frame": b"\0" * 8}, {"embed": [2, 192]}, {"texts": ["x" * 1025, ""]},
    {"frame": "x"}, {"frame": np.full((2, 4, 2), np.inf).tobytes()},
], ids=repr)
def test_a_damaged_stage2_does_not_parse(changes):
    with pytest.raises(EntryError):
        decode(_packed_s2(**changes), "k")


# ------------------------------------------------------------------------------- cache


@pytest.fixture
def sqlite_cache(tmp_path):
    cache = ResultCache(SqliteStore(tmp_path / "c.sqlite3"))
    yield cache
    cache.close()


def _save_and_look(cache: ResultCache, s2, needs) -> Entry | None:
    fp = job_fingerprint(_two_stage("identify"))
    cache.save(fp, HASH, model="centerface@1.5.0", width=5, height=6, tiles=1,
               detections=Detections(FACES.boxes, FACES.scores, FACES.labels), stage2=s2)
    cache.flush()
    return cache.lookup(fp, HASH, "centerface@1.5.0", stage2=needs)


def test_two_stage_save_then_lookup_hits(sqlite_cache):
    needs = stage2.cache_needs(stage2.plan("identify", "centerface"))
    hit = _save_and_look(sqlite_cache, IDENTIFY, needs)
    assert hit is not None and np.array_equal(hit.stage2.embeddings, EMB)
    objects, answers = stage2.from_cache(stage2.plan("identify", "centerface"),
                                         protocol.Cached(tiles=1, detections=hit.detections,
                                                         stage2=hit.stage2))
    assert np.array_equal(objects.landmarks, FACES.landmarks)
    assert [a[1:] for a in answers.values()] == [(None, None)] * 2
    assert np.array_equal(np.stack([a[0] for a in answers.values()]), EMB)


@pytest.mark.parametrize("s2", [None, PLATES], ids=["old-entry", "other-kind"])
def test_an_entry_without_the_stage2_the_job_needs_is_a_miss(sqlite_cache, s2, caplog):
    """An entry written before entries had stage 2 (or of another kind, by hand) under a
    two-stage job's key: a logged miss, deleted, so the result computed now replaces it;
    never a crash nor a record without landmarks or identities."""
    needs = stage2.cache_needs(stage2.plan("identify", "centerface"))
    assert _save_and_look(sqlite_cache, s2, needs) is None
    key = entry_key(job_fingerprint(_two_stage("identify")), HASH)
    assert sqlite_cache.guard.store.get(key) is None
    assert sqlite_cache.corrupt == 1 and "stage 2" in caplog.text


def test_old_entry_bytes_without_s2_read_as_before():
    """An entry of the format before issue 21 (no ``s2``): decodes with ``stage2`` None."""
    m = msgpack.unpackb(encode(Entry(key="k", model="m@1", width=1, height=1, tiles=1,
                                     detections=Detections.empty())), raw=False)
    assert "s2" not in m
    assert decode(msgpack.packb(m, use_bin_type=True), "k").stage2 is None


def test_redis_two_stage_round_trip(redis_server):
    cache = open_cache(redis_server.url)
    try:
        needs = stage2.cache_needs(stage2.plan("plates", "plates-det"))
        fp = job_fingerprint(_two_stage("plates"))
        cache.save(fp, HASH, model="plates-det@1", width=5, height=6, tiles=1,
                   detections=Detections(FACES.boxes, FACES.scores, FACES.labels),
                   stage2=PLATES)
        cache.flush()
        hit = cache.lookup(fp, HASH, "plates-det@1", stage2=needs)
        assert hit is not None and hit.stage2.texts == PLATES.texts
        assert hit.stage2.text_scores == PLATES.text_scores
        cache.guard.store.clear()
    finally:
        cache.close()


# ------------------------------------------------------------------------------- wire


def _info(s2, n=2) -> protocol.ImageInfo:
    dets = Detections(FACES.boxes[:n], FACES.scores[:n], FACES.labels[:n])
    return protocol.ImageInfo(job="j", image="i", path="p.png", seq=0, width=9, height=8,
                              hash=HASH, secret="s", cached=protocol.Cached(
                                  tiles=2, detections=dets, created=time.time(), stage2=s2))


@pytest.mark.parametrize("s2", [IDENTIFY, PLATES], ids=["identify", "plates"])
def test_image_announcement_carries_stage2_exactly(s2):
    got = protocol.decode(protocol.encode(_info(s2)))
    c = got.cached.stage2
    assert c.points.tobytes() == s2.points.tobytes() and c.texts == s2.texts
    assert c.text_scores == s2.text_scores
    assert (c.embeddings is None) == (s2.embeddings is None)
    if s2.embeddings is not None:
        assert c.embeddings.tobytes() == s2.embeddings.tobytes()


def test_announcement_without_stage2_is_the_bytes_it_was():
    frames = protocol.encode(_info(None))
    assert len(frames) == 5 and b"stage2" not in bytes(frames[1])
    from zmqvision.sockets import MAX_FRAMES

    assert len(protocol.encode(_info(IDENTIFY))) <= MAX_FRAMES  # the sink takes it


@pytest.mark.parametrize("damage", ["frame", "texts", "both", "answerless"])
def test_a_damaged_stage2_announcement_is_refused(damage):
    frames = [bytes(f) for f in protocol.encode(_info(PLATES))]
    h = msgpack.unpackb(frames[1], raw=False)
    s2 = h["cached"]["stage2"]
    if damage == "frame":
        frames = frames[:-1]
    elif damage == "texts":
        s2["texts"] = ["only one"]
    elif damage == "both":
        s2["embed"] = [2, 4]
    else:
        del s2["texts"], s2["text_scores"]
    frames[1] = msgpack.packb(h, use_bin_type=True)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frames)


def test_a_cached_image_without_its_stage2_is_an_error_at_the_sink():
    """A two-stage job's hit without stage 2 (a ventilator's bug) is never a record
    without landmarks: the image's error."""
    from zmqvision.sink.jobs import JobState

    job = JobState(_two_stage("plates"))
    img = job.announce(_info(None))
    job.stage2_from_cache(img)
    assert img.error["type"] == "bad_result" and img.objects is None
    img = job.announce(_info(IDENTIFY))  # embeddings for a reader: refused too
    job.stage2_from_cache(img)
    assert img.error["type"] == "bad_result"
    img = job.announce(_info(PLATES))
    job.stage2_from_cache(img)
    assert img.error is None and len(img.objects) == 2 and img.answers[0][1] == "京A12345"


def test_an_ocr_record_from_a_hit_is_the_computed_one():
    """The sink's two paths to an ocr record, with no model: an image whose lines were
    answered by workers, and the same image announced as a hit of the entry its record
    saved (through the wire) — the same rows, in the same reading order, lines read as
    nothing or below 0.5 left out in both."""
    from zmqvision.sink.jobs import JobState

    boxes = np.array([[10, 200, 300, 240], [10, 20, 200, 60], [220, 20, 400, 60],
                      [10, 120, 90, 150]], np.float64)
    quads = np.stack([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]] for x0, y0, x1, y1 in boxes])
    objects = Detections(boxes, np.array([0.9, 0.8, 0.7, 0.6], np.float32),
                         np.zeros(4, np.int32), quads.astype(np.float64))
    answers = {0: (None, " bottom line ", 0.91234567), 1: (None, "top left", 0.87),
               2: (None, "top right", 0.3), 3: (None, "", 0.99)}
    job = JobState(_two_stage("ocr"))
    base = dict(job="j", path="a.png", seq=0, width=500, height=300, hash=HASH, secret="s")
    img = job.announce(protocol.ImageInfo(image="a", tiles=1, **base))
    img.parts[0], img.objects, img.answers = objects, objects, answers
    computed = job.finish_image(img), img.extras
    s2 = stage2.cache_data(job.stage2, objects, answers)
    hit = protocol.decode(protocol.encode(protocol.ImageInfo(
        image="b", cached=protocol.Cached(
            tiles=1, detections=Detections(boxes, objects.scores, objects.labels),
            stage2=s2), **base)))
    img = job.announce(hit)
    job.stage2_from_cache(img)
    cached = job.finish_image(img), img.extras
    assert [e["text"] for e in computed[1]] == ["top left", "bottom line"]
    assert cached[1] == computed[1]
    assert cached[0].boxes.tobytes() == computed[0].boxes.tobytes()
    assert cached[0].scores.tobytes() == computed[0].scores.tobytes()
