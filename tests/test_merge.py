"""Merging per-tile detections: against brute-force references, order independence, and
a loose guard against quadratic behaviour.

Run this file as a script to print merge timings: ``python tests/test_merge.py``.
"""

from __future__ import annotations

import time
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqvision import merge as merge_module
from zmqvision.boxes import Detections, overlap_one_to_many
from zmqvision.merge import MergeConfig, merge, merge_partials

CONFIGS = [
    MergeConfig(method=m, metric=k, threshold=t, class_agnostic=a)
    for m in ("nmm", "nms")
    for k in ("ios", "iou")
    for t in (0.5, 0.3)
    for a in (False, True)
]


# --- brute-force references (quadratic, obviously right) ------------------------------


def _rank(boxes, scores, labels):
    return np.lexsort((labels, boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))


def reference(dets: Detections, cfg: MergeConfig) -> Detections:
    """Greedy NMS / NMM class by class, comparing each keeper with all remaining boxes."""
    out_b, out_s, out_l = [], [], []
    groups = [None] if cfg.class_agnostic else np.unique(dets.labels).tolist()
    for lab in groups:
        idx = np.arange(len(dets)) if lab is None else np.flatnonzero(dets.labels == lab)
        b, s, lbl = dets.boxes[idx], dets.scores[idx], dets.labels[idx]
        order = _rank(b, s, lbl)
        alive = np.ones(len(idx), bool)
        for pos, i in enumerate(order):
            if not alive[i]:
                continue
            rest = order[pos + 1 :]
            rest = rest[alive[rest]]
            box = b[i].copy()
            if len(rest):
                hit = rest[overlap_one_to_many(b[i], b[rest], cfg.metric) >= cfg.threshold]
                alive[hit] = False
                if cfg.method == "nmm" and len(hit):
                    box[:2] = np.minimum(box[:2], b[hit, :2].min(axis=0))
                    box[2:] = np.maximum(box[2:], b[hit, 2:].max(axis=0))
            out_b.append(box)
            out_s.append(s[i])
            out_l.append(lbl[i])
    if not out_b:
        return Detections.empty()
    res = Detections.of(out_b, out_s, out_l)
    return res.take(_rank(res.boxes, res.scores, res.labels))


def same(a: Detections, b: Detections) -> bool:
    """Bit-for-bit equality."""
    return (
        a.boxes.tobytes() == b.boxes.tobytes()
        and a.scores.tobytes() == b.scores.tobytes()
        and a.labels.tobytes() == b.labels.tobytes()
        and a.boxes.dtype == np.float64
        and a.scores.dtype == np.float32
        and a.labels.dtype == np.int32
    )


def random_dets(n: int, size: float, seed: int, classes: int = 3, spread: bool = False):
    """Random boxes; ``spread`` draws sides log-uniformly over 3 decades (several levels)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, (n, 2))
    wh = np.exp(rng.uniform(0, np.log(2000), (n, 2))) if spread else rng.uniform(20, 60, (n, 2))
    return Detections.of(np.c_[xy, xy + wh], rng.random(n), rng.integers(0, classes, n))


# Small integer grid, few score values: many overlaps, exact-threshold cases and ties.
coord = st.integers(0, 60)
box_st = st.tuples(coord, coord, st.integers(0, 30), st.integers(0, 30)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)
det_st = st.lists(
    st.tuples(box_st, st.sampled_from([0.3, 0.5, 0.5, 0.9, 1.0]), st.integers(0, 2)),
    max_size=40,
)


def _dets(items) -> Detections:
    if not items:
        return Detections.empty()
    b, s, lbl = zip(*items, strict=True)
    return Detections.of(b, s, lbl)


# --- properties -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(det_st, st.sampled_from(CONFIGS), st.randoms(use_true_random=False))
def test_independent_of_arrival_order(items, cfg, rnd):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert same(merge(_dets(items), cfg), merge(_dets(shuffled), cfg))


@settings(max_examples=150, deadline=None)
@given(det_st, st.sampled_from(CONFIGS))
def test_matches_reference_on_small_random_inputs(items, cfg):
    dets = _dets(items)
    assert same(merge(dets, cfg), reference(dets, cfg))


def tiny_chunks():
    """The greedy pass reads the pairs in chunks (each dropping pairs already settled) and
    the pairs are found in batches: make both tiny, so chunk and batch borders fall inside
    the pairs of one box."""
    return mock.patch.multiple(merge_module, _GREEDY_CHUNK=2, _GREEDY_CHUNK_MAX=8,
                               _PAIR_BATCH=16)


@settings(max_examples=150, deadline=None)
@given(det_st, st.sampled_from(CONFIGS))
def test_matches_reference_in_tiny_chunks(items, cfg):
    dets = _dets(items)
    with tiny_chunks():
        assert same(merge(dets, cfg), reference(dets, cfg))


@pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
def test_pile_on_one_object_matches_reference_in_tiny_chunks(cfg):
    # A pile (every pair matches) next to ordinary boxes: after the first chunks nearly
    # every pair has an absorbed end and is dropped before the loop.
    rng = np.random.default_rng(5)
    piled = Detections.of(np.array([100.0, 100, 160, 150]) + rng.normal(0, 2, (300, 4)),
                          rng.random(300), rng.integers(0, 2, 300))
    dets = Detections.concat([piled, random_dets(300, 600, seed=6)])
    want = reference(dets, cfg)
    with tiny_chunks():
        assert same(merge(dets, cfg), want)
    assert same(merge(dets, cfg), want)


@pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
@pytest.mark.parametrize("spread", [False, True], ids=["typical", "mixed-sizes"])
def test_matches_reference_on_larger_random_inputs(cfg, spread):
    for seed in range(2):
        dets = random_dets(400, 600 if not spread else 3000, seed, spread=spread)
        assert same(merge(dets, cfg), reference(dets, cfg))


# --- explicit cases -------------------------------------------------------------------


def test_object_cut_by_a_tile_border_becomes_one_box():
    # Tiles [0, 640) and [512, 1152): an object at x 600..700 is cut at 640 in the first,
    # whole in the second, and seen again (slightly off) by the full-image pass.
    dets = Detections.of(
        [[600, 100, 700, 200], [600, 100, 640, 200], [598, 99, 702, 201]],
        [0.9, 0.8, 0.7],
        [1, 1, 1],
    )
    out = merge(dets, MergeConfig())
    assert len(out) == 1
    np.testing.assert_array_equal(out.boxes, [[598, 99, 702, 201]])
    assert out.scores[0] == np.float32(0.9) and out.labels[0] == 1
    # IoU alone would keep the half box (IoU 0.4): the reason IOS is the default.
    assert len(merge(dets, MergeConfig(method="nms", metric="iou"))) == 2


def test_different_classes_never_merge():
    dets = Detections.of([[0, 0, 10, 10]] * 3, [0.9, 0.8, 0.7], [0, 1, 2])
    for method in ("nmm", "nms"):
        assert sorted(merge(dets, MergeConfig(method=method)).labels.tolist()) == [0, 1, 2]


def test_class_agnostic_merges_across_classes():
    dets = Detections.of([[0, 0, 10, 10], [1, 1, 12, 12]], [0.8, 0.9], [0, 1])
    out = merge(dets, MergeConfig(class_agnostic=True))
    assert len(out) == 1 and out.labels[0] == 1  # the best box's class
    np.testing.assert_array_equal(out.boxes, [[0, 0, 12, 12]])


def test_nmm_matches_against_the_keepers_original_box():
    # b overlaps a; c overlaps the union a+b but not a itself: c stays separate.
    boxes = [[0, 0, 10, 10], [5, 0, 15, 10], [14, 0, 24, 10]]
    dets = Detections.of(boxes, [0.9, 0.8, 0.7], [0] * 3)
    out = merge(dets, MergeConfig(method="nmm", metric="iou", threshold=0.3))
    np.testing.assert_array_equal(out.boxes, [[0, 0, 15, 10], [14, 0, 24, 10]])


def test_nms_keeps_only_the_best():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]
    dets = Detections.of(boxes, [0.5, 0.9, 0.4], [0] * 3)
    out = merge(dets, MergeConfig(method="nms", metric="iou", threshold=0.5))
    np.testing.assert_array_equal(out.boxes, [[1, 1, 11, 11], [50, 50, 60, 60]])
    np.testing.assert_array_equal(out.scores, np.float32([0.9, 0.4]))


def test_empty_and_single():
    for cfg in CONFIGS + [MergeConfig(method="none")]:
        assert len(merge(Detections.empty(), cfg)) == 0
        one = Detections.of([[1, 2, 3, 4]], [0.5], [7])
        assert same(merge(one, cfg), one)
    assert len(merge_partials([], MergeConfig())) == 0


def test_none_only_sorts():
    dets = Detections.of([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 9, 9]], [0.2, 0.9, 0.9], [0] * 3)
    out = merge(dets, MergeConfig(method="none"))
    np.testing.assert_array_equal(out.boxes, [[0, 0, 10, 10], [1, 1, 9, 9], [0, 0, 10, 10]])
    np.testing.assert_array_equal(out.scores, np.float32([0.9, 0.9, 0.2]))


def test_merge_partials_is_merge_of_concat():
    parts = [random_dets(50, 200, seed) for seed in range(3)]
    cfg = MergeConfig(metric="iou")
    assert same(merge_partials(parts, cfg), merge(Detections.concat(parts), cfg))


def test_degenerate_boxes_are_kept_and_match_nothing():
    dets = Detections.of([[5, 5, 5, 9], [0, 0, 10, 10], [3, 3, 2, 2]], [0.9, 0.8, 0.7], [0] * 3)
    assert len(merge(dets, MergeConfig())) == 3


def test_dense_cluster_of_identical_boxes():
    boxes = np.tile([[10.0, 10, 50, 50]], (3000, 1))
    dets = Detections.of(boxes, np.linspace(0, 1, 3000), np.zeros(3000))
    out = merge(dets, MergeConfig())
    assert len(out) == 1 and out.scores[0] == np.float32(1.0)


def test_huge_box_among_small_ones():
    small = random_dets(2000, 5000, 3, classes=1)
    big = Detections.of([[0, 0, 5100, 5100]], [1.0], [0])  # contains and beats them all
    dets = Detections.concat([small, big])
    for cfg in (MergeConfig(), MergeConfig(method="nms", metric="iou")):
        assert same(merge(dets, cfg), reference(dets, cfg))
    assert len(merge(dets, MergeConfig())) == 1  # every small box lies inside it (IOS 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "wbf"},
        {"metric": "giou"},
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"threshold": "0.5"},
        {"class_agnostic": "yes"},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        MergeConfig(**kwargs)


# --- speed ----------------------------------------------------------------------------


def merge_timings(sizes=(1_000, 10_000, 100_000), repeats: int = 5, method: str = "nmm"):
    """Best and median seconds to merge ``n`` random 20-60 px boxes on a 20000 px image."""
    cfg = MergeConfig(method=method)
    result = {}
    for n in sizes:
        dets = random_dets(n, 20_000, seed=1)
        merge(dets, cfg)  # warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            merge(dets, cfg)
            times.append(time.perf_counter() - t)
        result[n] = (min(times), float(np.median(times)))
    return result


def test_100k_boxes_not_quadratic():
    # A loose bound: catches an all-pairs merge (minutes), not a slow machine.
    (best, _), = merge_timings((100_000,), repeats=1).values()
    assert best < 20.0


if __name__ == "__main__":
    for method in ("nmm", "nms"):
        for n, (best, med) in merge_timings(method=method).items():
            print(f"{method} {n:>7} boxes: best {best * 1e3:7.1f} ms, median {med * 1e3:7.1f} ms")
