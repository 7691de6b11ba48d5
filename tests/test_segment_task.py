"""Segmentation as a task: the score frame on the wire, and the sink stitching real
deeplabv3 / selfie score maps as they arrive (in any order, re-sent, forged), driven with
real encoded messages; the pipeline's processes are in tests/integration/test_segment.py.
The reference is ``segment.segment_image``: the same tiles in one process."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
import skimage.data
from PIL import Image

from zmqvision import protocol as P
from zmqvision.boxes import Detections
from zmqvision.models import CATALOG
from zmqvision.plan import JobPlan, JobSettings
from zmqvision.sink import Sink, SinkConfig
from zmqvision.tasks import get as get_task

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def segmenters(models_ready):
    from zmqvision.segment import Segmenter

    return {n: Segmenter(CATALOG[n], threads=2) for n in ("deeplabv3", "selfie-segmentation")}


def mosaic() -> np.ndarray:
    """A 1024 x 768 image from the astronaut (a grid of deeplabv3 tiles)."""
    a = skimage.data.astronaut()
    return np.ascontiguousarray(np.tile(a, (2, 2, 1))[:768, :1024])


class Harness:
    """An in-process sink and one segmentation job of ``model``."""

    def __init__(self, tmp_path, model="deeplabv3", fmt="jsonl", **settings):
        self.out = tmp_path / ("out.json" if fmt == "coco" else "out.jsonl")
        self.masks = tmp_path / "masks"
        self.events: list = []
        self.sink = Sink(SinkConfig(out=str(self.out), format=fmt, masks=str(self.masks)),
                         self.events.append)
        self.plan = JobPlan(JobSettings(model=model, **settings))
        self.secret = P.new_job_secret()
        self.send(self.plan.job_start("j", secret=self.secret))

    def send(self, msg) -> None:
        self.sink.handle([bytes(memoryview(f)) for f in P.encode(msg)])

    def image(self, name: str, pixels: np.ndarray, seq: int = 0):
        h, w = pixels.shape[:2]
        tiles = self.plan.tiles(w, h)
        self.send(P.ImageInfo(job="j", image=name, path=f"{name}.png", seq=seq, width=w,
                              height=h, tiles=len(tiles), secret=self.secret))
        return tiles

    def records(self) -> dict[str, dict]:
        if not self.out.exists():
            return {}
        return {r["id"]: r for r in map(json.loads, self.out.read_text().splitlines())}


def worker_scores(seg, plan, pixels, tile) -> np.ndarray:
    """What a worker sends for a tile: the task's decoder on a finished request."""
    request = seg.compiled.create_infer_request()
    request.infer({0: seg.input_tensor(plan.cut(pixels, tile, 1)[0])})
    return get_task("segmentation").decode(seg, request, tile, None).scores


def result(name, tile, scores, model, **kw) -> P.Result:
    return P.Result(job="j", image=name, index=tile.index, worker="w", model=model,
                    detections=Detections.empty(), scores=scores, **kw)


# ---------------------------------------------------------------- the wire


def test_scores_frame_round_trips_without_a_copy_and_bad_ones_are_refused():
    scores = np.random.default_rng(0).random((5, 7, 3), np.float32)
    msg = P.Result(job="j", image="i", index=0, worker="w", model="m@1",
                   detections=Detections.empty(), scores=scores)
    frames = [bytes(memoryview(f)) for f in P.encode(msg)]
    assert len(frames) == 6 and P.decode(frames).scores.tolist() == scores.tolist()
    assert msgpack.unpackb(frames[1])["scores"] == [5, 7, 3]

    def forged(shape, data):
        f = list(frames)
        h = msgpack.unpackb(f[1])
        h["scores"] = shape
        f[1], f[5] = msgpack.packb(h), data
        return f

    nan = scores.copy()
    nan[1, 2, 0] = np.nan
    bad = {
        "nan": forged([5, 7, 3], nan.tobytes()),
        "short": forged([5, 7, 3], scores.tobytes()[:-4]),
        "shape lies": forged([7, 5, 4], scores.tobytes()),
        "oversized": forged([4096, 4096, 1], b"\0" * 16),
        "channels": forged([1, 1, 257], b"\0" * (257 * 4)),
        "not ints": forged([5.0, 7, 3], scores.tobytes()),
        "two dims": forged([35, 3], scores.tobytes()),
        "no frame": forged([5, 7, 3], scores.tobytes())[:5],
    }
    for why, f in bad.items():
        with pytest.raises(P.ProtocolError):
            P.decode(f)
            pytest.fail(why)


# ---------------------------------------------------------------- the sink


@pytest.mark.parametrize("model, pixels", [
    ("deeplabv3", "mosaic"), ("deeplabv3", "astronaut"), ("selfie-segmentation", "mosaic"),
])
def test_sink_masks_equal_the_single_process_reference_in_any_order(
        tmp_path, segmenters, model, pixels):
    from zmqvision.segment import segment_image

    seg = segmenters[model]
    px = mosaic() if pixels == "mosaic" else skimage.data.astronaut()
    h = Harness(tmp_path, model)
    tiles = h.image("img", px)
    assert (len(tiles) > 1) == (pixels == "mosaic")
    ref = segment_image(px, seg, tiles=tiles, overlap=h.plan.settings.overlap,
                        keep_scores=True)
    order = np.random.default_rng(1).permutation(len(tiles))
    for k, i in enumerate(order):
        scores = worker_scores(seg, h.plan, px, tiles[i])
        full = seg.infer(h.plan.cut(px, tiles[i], 1)[0])
        nh, nw = scores.shape[:2]
        assert np.abs(scores - full[:nh, :nw]).max() <= 1e-4  # what the wire carries
        h.send(result("img", tiles[i], scores, seg.spec.ref))
        if k == 0 and len(tiles) > 1:
            h.send(result("img", tiles[i], scores + 100, seg.spec.ref))  # a re-send: ignored
    (rec,) = h.records().values()
    assert rec["error"] is None and rec["detections"] == [] and rec["tiles"] == len(tiles)
    got = rec["segmentation"]
    mask = np.asarray(Image.open(got["mask"]))
    assert mask.shape == px.shape[:2] and Image.open(got["mask"]).mode == "P"
    assert np.array_equal(mask, ref.labels)
    assert got["classes"] == ref.record["classes"] and got["size"] == [px.shape[1],
                                                                        px.shape[0]]
    assert not list(h.masks.glob(".*"))  # no temporary left


def test_forged_scores_are_the_tiles_error_and_the_sink_goes_on(tmp_path, segmenters):
    seg = segmenters["selfie-segmentation"]
    px = mosaic()
    h = Harness(tmp_path, "selfie-segmentation")
    tiles = h.image("bad", px)
    h.image("good", px[:, ::-1].copy(), seq=1)
    good = h.plan.tiles(px.shape[1], px.shape[0])
    wrong = np.zeros((10, 10, 1), np.float32)  # not the tile's valid size
    h.send(result("bad", tiles[0], wrong, seg.spec.ref))
    classes = np.zeros(tuple(worker_scores(seg, h.plan, px, tiles[1]).shape[:2]) + (2,),
                       np.float32)  # two channels: the model has one
    h.send(result("bad", tiles[1], classes, seg.spec.ref))
    for t in tiles[2:]:
        h.send(result("bad", t, worker_scores(seg, h.plan, px, t), seg.spec.ref))
    flipped = px[:, ::-1].copy()
    for t in good:
        h.send(result("good", t, worker_scores(seg, h.plan, flipped, t), seg.spec.ref))
    recs = {r["image"]: r for r in h.records().values()}
    assert recs["bad.png"]["error"]["type"] == "bad_result"
    assert "valid part" in recs["bad.png"]["error"]["message"]
    assert recs["bad.png"]["segmentation"] is None
    assert recs["good.png"]["error"] is None and recs["good.png"]["segmentation"]["mask"]
    assert sorted(p.name for p in h.masks.iterdir()) == \
        [f"good-{next(i for i, r in h.records().items() if r['image'] == 'good.png')[:8]}.png"]


def test_a_detection_job_refuses_scores_and_a_segmentation_job_rows(tmp_path):
    h = Harness(tmp_path, "deeplabv3")
    (tile,) = h.image("rows", skimage.data.astronaut())
    h.send(P.Result(job="j", image="rows", index=0, worker="w", model=h.plan.model_ref,
                    detections=Detections.of([[0, 0, 5, 5]], [0.9], [1])))
    (rec,) = h.records().values()
    assert rec["error"]["type"] == "bad_result"

    d = Harness(tmp_path / "det", "centerface")
    (tile,) = d.plan.tiles(64, 64)
    d.send(P.ImageInfo(job="j", image="s", path="s.png", seq=0, width=64, height=64,
                       tiles=1, secret=d.secret))
    d.send(result("s", tile, np.zeros((64, 64, 2), np.float32), d.plan.model_ref))
    (rec,) = d.records().values()
    assert rec["error"]["type"] == "bad_result" and "score map" in rec["error"]["message"]


def test_coco_output_has_the_masks_rle_and_draw_blends_them(tmp_path, segmenters):
    mask_api = pytest.importorskip("pycocotools.mask")
    from zmqvision.results import draw_record

    seg = segmenters["deeplabv3"]
    px = skimage.data.chelsea()
    h = Harness(tmp_path, "deeplabv3", fmt="coco")
    (tile,) = h.image("cat", px)
    h.send(result("cat", tile, worker_scores(seg, h.plan, px, tile), seg.spec.ref))
    h.send(P.JobEnd(job="j", images=1, tiles=1, secret=h.secret))
    doc = json.loads(h.out.read_text())
    journal = h.out.with_name(h.out.name + ".journal.jsonl").read_text().splitlines()
    (rec,) = [json.loads(line) for line in journal]
    mask = np.asarray(Image.open(rec["segmentation"]["mask"]))
    anns = doc["annotations"]
    assert {a["category_id"] for a in anns} == {c["class_id"] + 1
                                                for c in rec["segmentation"]["classes"]}
    cat = next(a for a in anns if a["category_id"] == 9)  # VOC 8, COCO ids from 1
    assert cat["area"] > 0.5 * px.shape[0] * px.shape[1]
    rle = dict(cat["segmentation"], counts=cat["segmentation"]["counts"].encode())
    assert np.array_equal(mask_api.decode(rle).astype(bool), mask == 8)
    # --draw: the mask over the photo
    Image.fromarray(px).save(tmp_path / "cat.png")
    drawn = np.asarray(Image.open(draw_record(rec, str(tmp_path / "cat.png"), tmp_path / "d")))
    assert np.abs(drawn.astype(int) - px).mean() > 10  # coloured where the cat is
