"""The merge's plain-Python way for a few boxes (``merge._SmallMerge``) gives bit for bit
what the general way (spatial hash, numpy) gives: same boxes, scores, classes, points and
order, on random inputs of many seeds (ties, exact thresholds, zero-area boxes, signed
zeros) and on real detections (ssd on crops of the example photos, CenterFace's faces
with their points on overlapping tiles of the astronaut)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqvision import merge as merge_module
from zmqvision.boxes import Detections
from zmqvision.merge import METHODS, MergeConfig, merge

pytestmark = pytest.mark.timeout(300)

CONFIGS = [
    MergeConfig(method=m, metric=k, threshold=t, class_agnostic=a)
    for m in METHODS
    for k in ("ios", "iou")
    for t in (0.5, 0.3, 1.0)
    for a in (False, True)
]
SMALL = merge_module._SMALL


def general(dets: Detections, cfg: MergeConfig) -> Detections:
    """The merge with the small way switched off."""
    saved = merge_module._SMALL
    merge_module._SMALL = 0
    try:
        return merge(dets, cfg)
    finally:
        merge_module._SMALL = saved


def identical(a: Detections, b: Detections) -> bool:
    """Bit for bit, dtypes and points included (``-0.0`` is not ``0.0`` here)."""
    if (a.landmarks is None) != (b.landmarks is None):
        return False
    arrays = [(a.boxes, b.boxes), (a.scores, b.scores), (a.labels, b.labels)]
    if a.landmarks is not None:
        arrays.append((a.landmarks, b.landmarks))
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
               for x, y in arrays)


def check(dets: Detections, cfg: MergeConfig) -> None:
    assert identical(merge(dets, cfg), general(dets, cfg)), (cfg, dets)


def test_small_way_is_taken_for_few_finite_boxes():
    dets = Detections.of([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [0, 0])
    assert merge_module._SmallMerge.of(dets) is not None
    for bad in (np.nan, np.inf, -np.inf):
        boxes = dets.boxes.copy()
        boxes[1, 2] = bad
        assert merge_module._SmallMerge.of(Detections(boxes, dets.scores, dets.labels)) is None
        scores = dets.scores.copy()
        scores[0] = bad
        assert merge_module._SmallMerge.of(Detections(dets.boxes, scores, dets.labels)) is None


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_finite_boxes_whose_sum_overflows_go_the_general_way():
    dets = Detections.of([[0, 0, 1e308, 1e308], [1e308, 1e308, 1.5e308, 1.5e308]],
                         [0.9, 0.8], [0, 0])
    assert merge_module._SmallMerge.of(dets) is None
    for cfg in CONFIGS:
        check(dets, cfg)


# Small integer grid, few score values: many overlaps, exact-threshold cases, ties,
# zero-area and inverted boxes.
coord = st.integers(0, 40)
box_st = st.tuples(coord, coord, st.integers(-3, 20), st.integers(-3, 20)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))
det_st = st.lists(
    st.tuples(box_st, st.sampled_from([0.3, 0.5, 0.5, 0.9, 1.0]), st.integers(0, 2)),
    max_size=SMALL + 4)


@settings(max_examples=400, deadline=None)
@given(det_st, st.sampled_from(CONFIGS), st.booleans())
def test_small_way_equals_general_way_on_grids(items, cfg, points):
    if not items:
        return
    b, s, lbl = zip(*items, strict=True)
    n = len(s)
    pts = np.arange(n * 5 * 2, dtype=np.float64).reshape(n, 5, 2) if points else None
    check(Detections.of(b, s, lbl, pts), cfg)


@pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
def test_small_way_equals_general_way_on_many_seeds(cfg):
    for seed in range(300):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, SMALL + 1))
        size = float(rng.choice([50.0, 300.0, 4000.0]))
        xy = rng.uniform(-0.1 * size, size, (n, 2))
        wh = rng.uniform(0, size / 3, (n, 2))
        wh[rng.random((n, 2)) < 0.05] = 0.0  # some zero-area boxes
        boxes = np.c_[xy, xy + wh]
        if seed % 3 == 0:  # exact copies and shared edges: exact ties and thresholds
            boxes[n // 2:] = boxes[:n - n // 2]
            boxes = np.round(boxes / 10) * 10
        if seed % 7 == 0:
            boxes[rng.random(boxes.shape) < 0.2] = -0.0  # signed zeros survive as they were
        scores = rng.choice(np.float32([0.25, 0.5, 0.75, 0.9]), n) if seed % 2 else \
            rng.random(n).astype(np.float32)
        labels = rng.integers(0, 1 + seed % 4, n)
        points = rng.uniform(0, size, (n, 5, 2)) if seed % 5 == 0 else None
        check(Detections.of(boxes, scores, labels, points), cfg)


def test_signed_zero_coordinates_are_kept_bit_for_bit():
    dets = Detections.of([[-0.0, 0.0, 10, 10], [0.0, -0.0, 10, 10], [20, 20, 30, 30]],
                         [0.5, 0.5, 0.5], [0, 0, 0])
    for cfg in CONFIGS:
        check(dets, cfg)


@pytest.fixture(scope="module")
def ssd(models_ready):
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    return Detector(resolve("ssd-mobilenetv2-oid"), threads=1)


@pytest.fixture(scope="module")
def centerface(models_ready):
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    return Detector(resolve("centerface"), threads=1)


def test_small_way_equals_general_way_on_real_single_tiles(ssd, photos):
    """ssd-mobilenetv2-oid on crops of the example photos, as single-tile images are:
    at the sink's default threshold and at a low one (more boxes, more overlaps)."""
    from PIL import Image

    from zmqvision.tiling import letterbox

    rng = np.random.default_rng(0)
    seen = 0
    for path in photos:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        for _ in range(6):
            side = int(rng.integers(min(h, w) // 3, min(h, w)))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            pixels, _ = letterbox(image[y:y + side, x:x + side], ssd.input_size)
            for threshold in (None, 0.05):
                dets = ssd.infer(pixels, threshold)
                seen += 2 <= len(dets) <= SMALL
                for cfg in CONFIGS:
                    check(dets, cfg)
    assert seen >= 10  # the small way was really exercised


def test_small_way_equals_general_way_on_real_tiles_with_points(centerface):
    """CenterFace with its five points on overlapping cuts of the astronaut: the parts of
    one tile, of neighbouring tiles and of the whole image, each small enough."""
    from tests.faces_samples import astronaut
    from zmqvision.faces.identify import detect_tile
    from zmqvision.tiling import cut_tile, plan_scales, points_to_image_coords, to_image_coords

    image = astronaut()
    h, w = image.shape[:2]
    parts = []
    for tile in plan_scales(w, h, [(200, 200), (320, 320), None], 0.5):
        pixels, s = cut_tile(image, tile, centerface.input_size)
        d = detect_tile(centerface, pixels, 0.2)
        if len(d):
            parts.append(Detections(to_image_coords(d.boxes, tile.box, s), d.scores, d.labels,
                                    points_to_image_coords(d.landmarks, tile.box, s)))
    assert len(parts) >= 3
    groups = [[p] for p in parts] + [parts[i:i + 3] for i in range(len(parts) - 2)]
    exercised = 0
    for group in groups:
        dets = Detections.concat(group)
        exercised += 2 <= len(dets) <= SMALL
        for cfg in CONFIGS:
            check(dets, cfg)
    assert exercised >= 3
