"""Classification without processes: the real efficientnet-lite0 on real photos, its
payload on the wire (refused when forged), the sink's records and merge, the cache key,
COCO. The pipeline itself is tests/integration/test_classify.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import EXAMPLES
from zmqvision import protocol as P
from zmqvision import results, tasks
from zmqvision.boxes import Detections
from zmqvision.cache import job_fingerprint
from zmqvision.plan import JobPlan, JobSettings
from zmqvision.sink.jobs import JobState

MODEL = "efficientnet-lite0"
CATS = {"Egyptian cat", "tabby", "tiger cat"}


def whole_tile(name: str, **settings) -> tuple[JobPlan, np.ndarray]:
    """The tile the pipeline sends for a photo: its plan's cut of the decoded image."""
    from zmqvision.inputs import load_path

    plan = JobPlan(JobSettings(model=MODEL, **settings))
    loaded = load_path(str(EXAMPLES / name), plan.settings.max_pixels, reduce=plan.reducer())
    img = loaded.image
    tile = plan.tiles(img.width, img.height)[0]
    return plan, plan.cut(img.pixels, tile, img.reduced)[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("photo, wanted", [("chelsea.jpg", CATS),
                                            ("coffee.jpg", {"espresso", "cup"})])
def test_real_photos_get_their_class_in_the_top_two(classifier, photo, wanted):
    plan, pixels = whole_tile(photo)
    assert pixels.shape == (224, 224, 3)  # stretched, whole image: no letterbox bars
    ids, scores, emb = classifier.infer(pixels, 5, embed=True)
    names = [plan.spec.labels[i] for i in ids]
    assert set(names[:2]) & wanted, names
    assert np.all(np.diff(scores) <= 0) and 0 < scores[0] <= 1
    assert emb.shape == (1280,) and emb.dtype == np.float32 and np.isfinite(emb).all()


@pytest.mark.timeout(10)
def test_whole_image_is_one_tile_and_tile_gives_a_grid():
    plan = JobPlan(JobSettings(model=MODEL))
    assert plan.scales == (None,)
    assert [t.box for t in plan.tiles(451, 300)] == [(0, 0, 451, 300)]
    grid = JobPlan(JobSettings(model=MODEL, tile_size=(200, 200), overlap=0.0))
    assert len(grid.tiles(400, 400)) == 4
    assert grid.task_settings.grid and not plan.task_settings.grid
    with pytest.raises(ValueError, match="detection"):
        JobPlan(JobSettings(model=MODEL, min_size=20))
    with pytest.raises(ValueError, match="classification"):
        JobPlan(JobSettings(model="centerface", embed=True))


@pytest.mark.timeout(10)
def test_detection_job_start_and_tiles_are_unchanged():
    """Detection sends no task settings and its tiles ask nothing: the same bytes as
    before tasks existed (the cache key too)."""
    plan = JobPlan(JobSettings(model="centerface"))
    start = plan.job_start("j")
    assert "task" not in start.options and plan.tile_request is None
    tile = P.Tile(job="j", image="i", index=0, box=(0, 0, 4, 4), scale=1.0, model="m",
                  pixels=np.zeros((4, 4, 3), np.uint8), task=plan.tile_request)
    assert "task" not in tile.header()


@pytest.mark.timeout(10)
def test_cache_key_holds_the_task_settings():
    keys = {job_fingerprint(JobPlan(JobSettings(model=MODEL, **s)).job_start("j"))
            for s in ({}, {"top_k": 3}, {"tile_size": (200, 200)}, {"embed": True})}
    assert len(keys) == 4
    assert job_fingerprint(JobPlan(JobSettings(model="centerface")).job_start("j")) not in keys
    # An --embed job looks the cache up too: its entries keep the embeddings.
    assert JobPlan(JobSettings(model=MODEL, embed=True)).lookup_in(object()) is not None


# ---------------------------------------------------------------- wire


def classified(embedding=None, n=5, box=(0.0, 0.0, 10.0, 10.0)) -> P.Result:
    dets = Detections.of([box] * n, np.linspace(0.5, 0.1, n), np.arange(n))
    return P.Result(job="j", image="i", index=0, worker="w", model=f"{MODEL}@1.0.0",
                    detections=dets, embedding=embedding)


@pytest.mark.timeout(10)
def test_result_with_an_embedding_round_trips():
    emb = np.linspace(-1, 1, 1280, dtype=np.float32)
    frames = P.encode(classified(emb))
    assert len(frames) == 6  # tag, header, boxes, scores, labels, embedding
    back = P.decode(frames)
    assert np.array_equal(back.embedding, emb) and back.embedding.dtype == np.float32
    assert P.decode(P.encode(classified())).embedding is None
    assert "embedding" not in P.encode(classified())[1].decode("latin-1")


@pytest.mark.timeout(10)
def test_forged_embeddings_and_tile_tasks_are_refused():
    import msgpack

    frames = P.encode(classified(np.ones(8, np.float32)))
    with pytest.raises(P.ProtocolError, match="bytes"):
        P.decode(frames[:5] + [b"\0" * 12])
    with pytest.raises(P.ProtocolError, match="non-finite"):
        P.decode(frames[:5] + [np.full(8, np.nan, np.float32).tobytes()])
    with pytest.raises(P.ProtocolError, match="4 frames"):
        P.decode(frames[:5])
    h = msgpack.unpackb(frames[1])
    for dim in (0, P.MAX_EMBEDDING + 1, 2.0, True):
        h["embedding"] = dim
        with pytest.raises(P.ProtocolError):
            P.decode([frames[0], msgpack.packb(h), *frames[2:]])
    tile = P.encode(P.Tile(job="j", image="i", index=0, box=(0, 0, 4, 4), scale=1.0,
                           model="m", pixels=np.zeros((4, 4, 3), np.uint8),
                           task={"top_k": 5, "embed": True}))
    assert P.decode(tile).task == {"top_k": 5, "embed": True}
    th = msgpack.unpackb(tile[1])
    for bad in ({"top_k": 0}, {"top_k": P.MAX_TOP_K + 1}, {"top_k": 2, "embed": 1}, [5]):
        th["task"] = bad
        with pytest.raises(P.ProtocolError):
            P.decode([tile[0], msgpack.packb(th), *tile[2:]])


# ---------------------------------------------------------------- sink


def job(**settings) -> JobState:
    return JobState(JobPlan(JobSettings(model=MODEL, **settings)).job_start("j"))


def announce(state: JobState, tiles: int = 1):
    return state.announce(P.ImageInfo(job="j", image="i", path="p.jpg", seq=0, width=10,
                                      height=10, tiles=tiles))


@pytest.mark.timeout(10)
def test_sink_refuses_a_payload_the_job_did_not_ask_for():
    for result, why in [(classified(n=3), "3 classes"),
                        (classified(np.ones(4, np.float32)), "did not ask"),
                        (classified(n=5, box=(0, 0, 1, 1)), None)]:
        state = job()
        img = announce(state)
        state.add_part(img, result)
        assert (img.error is None) if why is None else why in img.error["message"]
    state = job(embed=True)
    img = announce(state)
    state.add_part(img, classified())
    assert "no embedding" in img.error["message"]
    # Rows of one tile with different boxes, a class id past the labels: refused too.
    dets = Detections.of([[0, 0, 1, 1], [0, 0, 2, 2]] + [[0, 0, 1, 1]] * 3,
                         [0.5] * 5, [0, 1, 2, 3, 4])
    state = job()
    img = announce(state)
    state.add_part(img, P.Result(job="j", image="i", index=0, worker="w",
                                 model=f"{MODEL}@1.0.0", detections=dets))
    assert img.error["type"] == "bad_result"


@pytest.mark.timeout(10)
def test_grid_record_has_each_tile_and_image_level_labels():
    state = job(tile_size=(5, 5), top_k=2, embed=True)
    img = announce(state, tiles=2)
    for index, box, ids, scores in [(1, (5, 0, 10, 5), [7, 3], [0.6, 0.2]),
                                    (0, (0, 0, 5, 5), [3, 9], [0.7, 0.1])]:
        dets = Detections.of([box] * 2, scores, ids)
        state.add_part(img, P.Result(job="j", image="i", index=index, worker="w",
                                     model=f"{MODEL}@1.0.0", detections=dets,
                                     embedding=np.full(4, index, np.float32)))
    dets = state.finish_image(img)
    fields = state.record_fields(img, dets)
    assert [g["box"] for g in fields["grid"]] == [[0, 0, 5, 5], [5, 0, 10, 5]]  # tile order
    assert [g["embedding"] for g in fields["grid"]] == [[0.0] * 4, [1.0] * 4]
    assert [d["class_id"] for d in fields["grid"][1]["labels"]] == [7, 3]
    # Image level: per class its best score over the tiles, the 2 best.
    assert [(d["class_id"], round(d["score"], 3)) for d in fields["labels"]] == [(3, 0.7),
                                                                                 (7, 0.6)]
    assert state.detections == 0  # classes are not counted as detections


@pytest.mark.timeout(10)
def test_coco_has_image_level_labels(tmp_path):
    rec = results.make_record(path="a.jpg", image_id="i", job="j", width=40, height=30,
                              model="m", labels=["cat", "cup"], detections=None, error=None,
                              task="classification",
                              extra={"labels": [{"label": "cup", "class_id": 1,
                                                 "score": 0.75}]})
    out = tmp_path / "coco.json"
    results.write_coco([rec], ["cat", "cup"], out)
    coco = json.loads(out.read_text())
    (ann,) = coco["annotations"]
    assert ann["category_id"] == 2 and ann["bbox"] == [0, 0, 40, 30]
    assert ann["score"] == 0.75 and ann["image_label"] is True


@pytest.mark.timeout(10)
def test_task_settings_from_the_wire_are_checked():
    assert tasks.of_options({})[0].name == "detection"
    task, settings = tasks.of_options({"task": {"name": "classification", "top_k": 3}})
    assert task.name == "classification" and settings.top_k == 3
    for bad in ({"name": "recognition"}, {"name": "classification", "top_k": 0},
                {"name": "classification", "embed": "yes"}, "classification"):
        with pytest.raises(ValueError):
            tasks.of_options({"task": bad})


# ---------------------------------------------------------------- models


@pytest.mark.timeout(60)
def test_labels_are_the_member_packed_in_the_model_file(classifier):
    """The class names typed into the catalog are exactly the zip member inside the
    .tflite that ``models pull`` verifies (``Fetch.labels_sha256``)."""
    import hashlib

    from zmqvision.models import model_file, resolve
    from zmqvision.models.store import zip_member

    spec = resolve(MODEL)
    raw = zip_member(model_file(spec).read_bytes(), spec.fetch.labels_member)
    assert hashlib.sha256(raw).hexdigest() == spec.fetch.labels_sha256
    assert tuple(raw.decode().splitlines()) == spec.labels and len(spec.labels) == 1000
    assert spec.fetch.kind == "sdist" and spec.task == "classification"


@pytest.mark.timeout(60)
def test_user_classifier_file_with_task_classify(classifier, tmp_path):
    import shutil

    from zmqvision.models import model_file, resolve

    mine = tmp_path / "mine.tflite"
    shutil.copy(model_file(resolve(MODEL)), mine)
    spec = resolve(str(mine), task="classify")
    assert (spec.task, spec.family, spec.input_size) == ("classification", "softmax",
                                                         (224, 224))
    assert spec.labels == resolve(MODEL).labels  # read from the zip member inside it
    assert spec.preprocess.color == "RGB"
    with pytest.raises(ValueError, match="DetectionOutput"):
        resolve(str(mine))  # read as a detector: refused, saying why
    with pytest.raises(ValueError, match="classification model"):
        resolve(MODEL, task="detect")
