"""Greedy non-maximum suppression for the candidates of one tile, the decoders' last step.

Exactly ``boxes.nms_small`` (and, with ``labels``, ``nms_small`` run class by class), but
with every pairwise overlap computed at once as an ``[n, n]`` matrix (the same float64
arithmetic as ``boxes.overlap_one_to_many``, element for element, so the same boxes are
kept), leaving the greedy pass only a boolean row per kept box. A tile's few candidates
then cost a handful of numpy calls instead of a dozen per candidate: this runs once per
tile on the worker, where every microsecond is taken from inference. Past
``MATRIX_MAX`` candidates (a very low score threshold) the matrix would be too big, and
the per-box loop of ``nms_small`` runs instead.
"""

from __future__ import annotations

import numpy as np

from zmqvision.boxes import areas, nms_small

MATRIX_MAX = 512  # candidates; the [n, n] float64 matrices are then 2 MiB each at most


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float,
               labels: np.ndarray | None = None) -> np.ndarray:
    """Kept indices of ``boxes`` (``[N, 4]`` float64 x1, y1, x2, y2), best score first,
    ties by position (x1, y1, x2, y2): ``nms_small``'s order. With ``labels`` a box only
    suppresses boxes of its own label; the kept indices are then in that same global
    order (a class's own kept indices in the order ``nms_small`` gives them for it)."""
    n = len(scores)
    if n == 0:
        return np.zeros((0,), np.int64)
    if n > MATRIX_MAX:
        return _per_box(boxes, scores, threshold, labels)
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))
    if n == 1:
        return order.astype(np.int64)
    over = _overlaps(boxes[order]) >= threshold
    if labels is not None:
        lab = labels[order]
        over &= lab[:, None] == lab[None, :]
    over = np.triu(over, 1)  # a box only ever suppresses those after it in the order
    if not over.any():
        return order.astype(np.int64)
    alive = np.ones(n, bool)
    keep = []
    for pos in range(n):
        if alive[pos]:
            keep.append(pos)
            alive &= ~over[pos]
    return order[np.asarray(keep, np.int64)].astype(np.int64)


def _overlaps(b: np.ndarray) -> np.ndarray:
    """IoU of every pair of ``b``: ``boxes.overlap_one_to_many`` of each box against all,
    as one matrix (the same operations in the same order, so the same float64 values)."""
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    ix1 = np.maximum(x1[:, None], x1[None, :])
    iy1 = np.maximum(y1[:, None], y1[None, :])
    ix2 = np.minimum(x2[:, None], x2[None, :])
    iy2 = np.minimum(y2[:, None], y2[None, :])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    a = areas(b)
    denom = a[:, None] + a[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, inter / denom, 0.0)


def _per_box(boxes: np.ndarray, scores: np.ndarray, threshold: float,
             labels: np.ndarray | None) -> np.ndarray:
    """Many candidates: ``nms_small`` per label, merged back into the global order."""
    if labels is None:
        return nms_small(boxes, scores, threshold)
    kept = np.concatenate([idx[nms_small(boxes[idx], scores[idx], threshold)]
                           for idx in (np.nonzero(labels == c)[0] for c in np.unique(labels))])
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return kept[np.argsort(rank[kept], kind="stable")].astype(np.int64)
