"""The worker's per-tile decoding, made cheaper, must keep every record byte for byte: the
matrix NMS (``models.nms``) against ``boxes.nms_small`` box for box, and the SSD decoder
against its former self (kept here as the reference) on random and hand-made outputs."""

from __future__ import annotations

import numpy as np
import pytest

from zmqvision.boxes import Detections, nms_small
from zmqvision.models import nms, resolve, ssd
from zmqvision.models.nms import greedy_nms


def _boxes(rng: np.random.Generator, n: int, side: float = 100.0) -> np.ndarray:
    """Overlapping boxes, some exact duplicates, some degenerate (zero width)."""
    xy = rng.uniform(0, side, (n, 2))
    wh = rng.uniform(0, side / 3, (n, 2))
    wh[rng.random(n) < 0.05, 0] = 0.0
    b = np.concatenate([xy, xy + wh], axis=1)
    dup = rng.random(n) < 0.1
    if n:
        b[dup] = b[0]
    return b


def _per_class_reference(boxes, scores, labels, threshold):
    """What a loop over the classes keeps: ``nms_small`` per class, class by class."""
    keep = [idx[nms_small(boxes[idx], scores[idx], threshold)]
            for idx in (np.nonzero(labels == c)[0] for c in np.unique(labels))]
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)


@pytest.mark.parametrize("seed", range(40))
def test_greedy_nms_keeps_what_nms_small_keeps_in_its_order(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    boxes = _boxes(rng, n)
    # Ties: scores drawn from few values, so the position decides the order.
    scores = rng.choice([0.3, 0.5, 0.5, 0.9], n) if seed % 2 else rng.random(n)
    for threshold in (0.0, 0.3, 0.45, 1.0):
        assert greedy_nms(boxes, scores, threshold).tolist() == \
            nms_small(boxes, scores, threshold).tolist()


@pytest.mark.parametrize("seed", range(40))
def test_greedy_nms_with_labels_is_nms_small_class_by_class(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(0, 80))
    boxes = _boxes(rng, n)
    scores = rng.choice([0.4, 0.6, 0.6], n) if seed % 2 else rng.random(n)
    labels = rng.integers(0, 4, n)
    for threshold in (0.3, 0.6):
        kept = greedy_nms(boxes, scores, threshold, labels)
        by_class = kept[np.argsort(labels[kept], kind="stable")]
        assert by_class.tolist() == _per_class_reference(boxes, scores, labels,
                                                         threshold).tolist()


def test_many_candidates_take_the_per_box_path_with_the_same_answer(monkeypatch):
    rng = np.random.default_rng(7)
    boxes, scores, labels = _boxes(rng, 90), rng.random(90), rng.integers(0, 3, 90)
    matrix = greedy_nms(boxes, scores, 0.5, labels)
    monkeypatch.setattr(nms, "MATRIX_MAX", 10)
    assert greedy_nms(boxes, scores, 0.5, labels).tolist() == matrix.tolist()
    assert greedy_nms(boxes, scores, 0.5).tolist() == nms_small(boxes, scores, 0.5).tolist()


# ---------------------------------------------------------------- the SSD decoder as it was


def _old_multiclass_nms(boxes, scores, labels, threshold, max_detections=ssd.MAX_DETECTIONS):
    keep = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        keep.append(idx[nms_small(boxes[idx], scores[idx], threshold)])
    if not keep:
        return Detections.empty()
    k = np.concatenate(keep)
    order = np.lexsort((boxes[k, 1], boxes[k, 0], labels[k], -scores[k]))[:max_detections]
    return Detections.of(boxes[k][order], scores[k][order], labels[k][order])


def _old_ssd_decode(outputs, spec, score_threshold):
    encodings, logits = outputs[0], outputs[1]
    logits = logits.reshape(-1, logits.shape[-1])[:, 1:]
    anchor_idx, label = np.nonzero(logits >= ssd.logit_floor(score_threshold))
    scores = 1.0 / (1.0 + np.exp(-logits[anchor_idx, label].astype(np.float64)))
    keep = scores >= score_threshold
    anchor_idx, label, scores = anchor_idx[keep], label[keep], scores[keep]
    if len(anchor_idx) == 0:
        return Detections.empty()
    width, height = spec.input_size
    boxes = ssd.decode_boxes(encodings.reshape(-1, 4)[anchor_idx], width, height, anchor_idx)
    return _old_multiclass_nms(boxes, scores, label, spec.nms_threshold)


def _same(a: Detections, b: Detections) -> None:
    for x, y in ((a.boxes, b.boxes), (a.scores, b.scores), (a.labels, b.labels)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("seed", range(12))
def test_ssd_decode_gives_what_it_gave_before(seed):
    spec = resolve("ssd-mobilenetv2-oid", None)
    rng = np.random.default_rng(seed)
    anchors = len(ssd.anchors())
    classes = 24
    # Mostly hopeless logits with a few hot anchors, some hot in several classes (the
    # background column too), and encodings that move boxes across each other.
    logits = rng.normal(-6.0, 2.0, (1, anchors, classes)).astype(np.float32)
    hot = rng.choice(anchors, 40, replace=False)
    logits[0, hot, rng.integers(0, classes, 40)] = rng.normal(1.0, 1.5, 40)
    logits[0, hot[:10], 0] = 5.0
    if seed % 3 == 0:  # a tied block: equal scores on neighbouring anchors
        logits[0, hot[:12], 3] = 2.0
    encodings = rng.normal(0.0, 1.0, (1, anchors, 4)).astype(np.float32)
    for threshold in (0.05, 0.3, 0.5, 0.95):
        _same(ssd.decode([encodings, logits], spec, threshold),
              _old_ssd_decode([encodings, logits], spec, threshold))


def test_ssd_decode_of_nothing_is_empty():
    spec = resolve("ssd-mobilenetv2-oid", None)
    anchors = len(ssd.anchors())
    logits = np.full((1, anchors, 24), -20.0, np.float32)
    logits[0, :, 0] = 20.0  # only background
    encodings = np.zeros((1, anchors, 4), np.float32)
    assert len(ssd.decode([encodings, logits], spec, 0.3)) == 0
