"""Merge the per-tile detections of one image into one set of boxes.

Overlapping tiles see the same object two to five times: whole in one tile, cut by a
border in another, downscaled in the full-image pass. Greedy non-maximum merging (NMM,
SAHI's default) with IOS (intersection over the smaller area) fuses those copies: a half
box lies inside the whole one, so its IOS is near 1 while its IoU may be only 0.5.

Unlike SAHI's all-pairs merge (an N x N matrix, out of memory on big images, SAHI issue
#1374), candidate pairs come from a spatial hash: only boxes sharing a grid cell are
compared. Boxes are sorted into levels by size; at level ``l`` the cell side is
``c0 * 2**l`` with ``c0`` twice the median box side, so each box touches at most 2 x 2
cells of its own level and of every coarser one. A pair is compared once, in the cell
holding the top-left corner of its intersection. The work is O(N log N + pairs of
intersecting boxes), and the greedy pass is a loop over the few matching pairs only.

The result never depends on the order in which tiles arrived: boxes are ranked by score
with a tie-break on coordinates and class, and every later step follows that rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zmqvision.boxes import Detections, areas

METHODS = ("nmm", "nms", "none")
METRICS = ("ios", "iou")

# Largest number of candidate pairs materialised at once: bounds the temporaries of one
# batch (index, coordinate and overlap arrays, about 150 bytes a pair: ~150 MB).
_PAIR_BATCH = 1 << 20
# The greedy pass reads pairs in chunks, the first this small, each next one twice as large.
_GREEDY_CHUNK = 1 << 12
_GREEDY_CHUNK_MAX = 1 << 20
# Cells per axis at the finest level are capped so cell keys fit in int64.
_MAX_CELLS_PER_AXIS = 1 << 20
# Up to this many boxes (all finite), ranking and matching run as plain Python over all
# pairs (``_SmallMerge``): for the few boxes of a single-tile image numpy's cost per call
# on tiny arrays outweighs the work. Past it the quadratic loop loses to the spatial hash
# when the boxes are of one class (the worst case for the loop).
_SMALL = 24
_ONE = np.zeros(1, np.intp)


@dataclass(frozen=True)
class MergeConfig:
    """How duplicates across tiles are fused.

    ``method``: ``"nmm"`` fuses a cluster into the union of its boxes (a cut object gets its
    full extent back), ``"nms"`` keeps only the best box, ``"none"`` only sorts.
    ``metric``: ``"ios"`` or ``"iou"``; a pair matches when it reaches ``threshold``
    (in (0, 1]; 0 would match disjoint boxes and make every pair a candidate).
    Boxes of different classes never match unless ``class_agnostic``.
    """

    method: str = "nmm"
    metric: str = "ios"
    threshold: float = 0.5
    class_agnostic: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown merge method {self.method!r} (one of {METHODS})")
        if self.metric not in METRICS:
            raise ValueError(f"unknown match metric {self.metric!r} (one of {METRICS})")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not isinstance(self.class_agnostic, bool):
            raise ValueError(f"class_agnostic must be a bool, got {self.class_agnostic!r}")


def merge(dets: Detections, config: MergeConfig = MergeConfig()) -> Detections:
    """Fuse duplicate detections of one image; result sorted best score first.

    NMS keeps each box not matched by a better kept box. NMM picks the same keepers (a
    box absorbed once is neither a keeper nor absorbed again) and grows each keeper into
    the union of itself and the boxes it absorbed; matches are always measured against the
    keeper's original box, so a growing union cannot swallow its neighbours.

    Landmarks, when the detections have them, follow their box (NMS) or, for NMM, come
    from the largest box of each cluster (``_largest_members_points``).
    """
    n = len(dets)
    if n == 0:
        return Detections.empty()
    if n == 1:
        return dets.take(_ONE)
    small = _SmallMerge.of(dets) if n <= _SMALL else None
    if small is not None:
        rank_order = np.array(small.order, np.intp)
    else:
        rank_order = _ranking(dets.boxes, dets.scores, dets.labels)
    if config.method == "none":
        return dets.take(rank_order)
    # Work in rank space: position r is the r-th best box.
    ranked = dets.take(rank_order)
    if small is not None:
        absorbed_by = small.absorbed_by(config)
        if absorbed_by is None:  # nothing matched: the ranked boxes are the result
            return ranked
    else:
        src, dst = _matching_pairs(ranked, config)
        if not len(src):
            return ranked
        absorbed_by = _greedy(n, src, dst)
    keep = absorbed_by < 0
    if config.method == "nms":
        return ranked.take(keep)
    boxes = ranked.boxes  # a fresh array from take(): grow the unions in place
    members = np.flatnonzero(~keep)
    owners = absorbed_by[members]
    if ranked.landmarks is not None:
        _largest_members_points(ranked, members, owners)
    np.minimum.at(boxes[:, 0], owners, boxes[members, 0])
    np.minimum.at(boxes[:, 1], owners, boxes[members, 1])
    np.maximum.at(boxes[:, 2], owners, boxes[members, 2])
    np.maximum.at(boxes[:, 3], owners, boxes[members, 3])
    # Unions may change the coordinate tie-break between equal scores: re-rank keepers.
    kept = np.flatnonzero(keep)
    return ranked.take(kept[_ranking(boxes[kept], ranked.scores[kept], ranked.labels[kept])])


class _SmallMerge:
    """Ranking and greedy matching of a few finite boxes in plain Python, all pairs.

    Gives exactly what ``_ranking``, ``_matching_pairs`` and ``_greedy`` give (the same
    order, the same pairs decided by the same float64 arithmetic in the same order as
    ``_pair_overlap``, the same keepers); tests/test_merge_small.py checks it against
    them. Non-finite input goes the general way (``of`` returns None): NaN's place in
    numpy's sorts is not Python's.
    """

    def __init__(self, boxes: list, scores: list, labels: list) -> None:
        n = len(scores)
        # Best score first; ties by x1, y1, x2, y2, class, then input order (stable).
        self.order = sorted(range(n), key=lambda i: (-scores[i], *boxes[i], labels[i]))
        self.boxes = [boxes[i] for i in self.order]
        self.labels = [labels[i] for i in self.order]

    @classmethod
    def of(cls, dets: Detections) -> _SmallMerge | None:
        boxes, scores = dets.boxes.tolist(), dets.scores.tolist()
        # A finite sum means finite terms (NaN and inf propagate; an overflow only sends
        # finite boxes the general way).
        if not math.isfinite(sum(scores) + sum(map(sum, boxes))):
            return None
        return cls(boxes, scores, dets.labels.tolist())

    def absorbed_by(self, config: MergeConfig) -> np.ndarray | None:
        """Per rank, the rank of the keeper that absorbed it, or -1 (``_greedy``'s
        answer); None when no pair matches. Pairs are visited by source rank, then
        target, as ``_greedy`` visits them, so the keepers are the same."""
        boxes, labels = self.boxes, self.labels
        n = len(boxes)
        area = [max(x2 - x1, 0.0) * max(y2 - y1, 0.0) for x1, y1, x2, y2 in boxes]
        iou = config.metric == "iou"
        agnostic = config.class_agnostic
        threshold = config.threshold
        # Out of play: absorbed, or of zero area (matches nothing, as the general way).
        gone = [a <= 0.0 for a in area]
        owner: dict[int, int] = {}
        for s in range(n - 1):
            if gone[s]:
                continue
            sx1, sy1, sx2, sy2 = boxes[s]
            sa, sl = area[s], labels[s]
            for d in range(s + 1, n):
                if gone[d] or (not agnostic and labels[d] != sl):
                    continue
                dx1, dy1, dx2, dy2 = boxes[d]
                iw = min(sx2, dx2) - max(sx1, dx1)
                ih = min(sy2, dy2) - max(sy1, dy1)
                if iw <= 0.0 or ih <= 0.0:
                    continue  # no intersection: overlap 0, below any threshold
                inter = iw * ih
                da = area[d]
                denom = sa + da - inter if iou else min(sa, da)
                if denom > 0.0 and inter / denom >= threshold:
                    gone[d] = True
                    owner[d] = s
        if not owner:
            return None
        out = np.full(n, -1, np.int64)
        for d, s in owner.items():
            out[d] = s
        return out


def _largest_members_points(ranked: Detections, members: np.ndarray,
                            owners: np.ndarray) -> None:
    """Give each NMM keeper the landmarks of the largest box of its cluster (in place).

    A face cut by a tile border may score higher than its whole copy, but its points are
    guesses outside the pixels it saw (measured: eyes 5-12 px off on the astronaut); the
    largest member is the most complete view, and its points fit the union box the
    keeper grows into. Ties keep the better-ranked member. Runs before the unions grow.
    """
    assert ranked.landmarks is not None
    area = areas(ranked.boxes)
    bigger = area[members] > area[owners]
    if not bigger.any():
        return
    cand, own = members[bigger], owners[bigger]
    order = np.lexsort((-cand, area[cand], own))  # by owner, then area, then better rank
    cand, own = cand[order], own[order]
    last = np.r_[own[1:] != own[:-1], True]  # each owner's largest member
    ranked.landmarks[own[last]] = ranked.landmarks[cand[last]]


def merge_partials(parts: list[Detections], config: MergeConfig = MergeConfig()) -> Detections:
    """Merge the partial results of all tiles of one image."""
    return merge(Detections.concat(parts), config)


def _ranking(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices best score first; ties broken by x1, y1, x2, y2, then class, so that equal
    inputs in any order rank the same.

    A six-key lexsort of every box costs more than the rest of the merge, so sort on the
    score alone and lexsort only the runs of equal scores.
    """
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    same = (s[1:] == s[:-1]) | (np.isnan(s[1:]) & np.isnan(s[:-1]))
    if not same.any():
        return order
    tied = np.r_[same, False] | np.r_[False, same]
    run = np.cumsum(~np.r_[False, same])[tied]  # run id, increasing along ``order``
    idx = order[tied]
    b = boxes[idx]
    order[tied] = idx[np.lexsort((labels[idx], b[:, 3], b[:, 2], b[:, 1], b[:, 0], run))]
    return order


def _greedy(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Greedy suppression over matching pairs ``src < dst`` (ranks).

    Returns, per rank, the rank of the keeper that absorbed it, or -1 for keepers. Pairs
    are visited by source rank, so a box's own fate is settled (all its better matches
    seen) before it may absorb anything. Only matching pairs are visited: a few per box.

    The pairs are read in chunks of growing size, and a chunk first drops (in numpy) every
    pair whose source or target is already absorbed: the loop would skip it anyway, since
    a box once absorbed stays so. When one box absorbs a pile of thousands, the pairs
    among the absorbed (quadratic in the pile) thus never reach the Python loop.
    """
    absorbed_by = np.full(n, -1, np.int64)
    if not len(src):
        return absorbed_by
    # By source, then target: one int64 key (src * n + dst < n**2) sorts several times
    # faster than a two-key lexsort, and equal keys keep their order either way.
    order = np.argsort(src * n + dst, kind="stable")
    gone = bytearray(n)
    gone_np = np.frombuffer(gone, np.uint8)  # the same memory, for the chunk filter
    owner_of: dict[int, int] = {}
    start, chunk = 0, _GREEDY_CHUNK
    while start < len(order):
        part = order[start:start + chunk]
        start += len(part)
        chunk = min(2 * chunk, _GREEDY_CHUNK_MAX)
        s_part, d_part = src[part], dst[part]
        live = (gone_np[s_part] | gone_np[d_part]) == 0
        for s, d in zip(s_part[live].tolist(), d_part[live].tolist(), strict=True):
            if gone[s] or gone[d]:
                continue
            gone[d] = 1
            owner_of[d] = s
    del gone_np  # release the export before the bytearray goes
    if owner_of:
        absorbed_by[np.fromiter(owner_of.keys(), np.int64, len(owner_of))] = np.fromiter(
            owner_of.values(), np.int64, len(owner_of)
        )
    return absorbed_by


def _matching_pairs(ranked: Detections, config: MergeConfig) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of ranks ``(src < dst)`` whose overlap reaches the threshold, each once.

    Boxes of zero area or with non-finite coordinates can match nothing (overlap 0) and
    stay out of the index.
    """
    boxes = ranked.boxes
    area = areas(boxes)
    ok = np.isfinite(boxes).all(axis=1) & (area > 0)
    ids = np.flatnonzero(ok)
    empty = np.zeros(0, np.int64)
    if len(ids) < 2:
        return empty, empty
    b = boxes[ids]
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    ox, oy = b[:, 0].min(), b[:, 1].min()
    extent = max(b[:, 2].max() - ox, b[:, 3].max() - oy)
    if config.class_agnostic:
        klass = np.zeros(len(ids), np.int64)
    else:
        klass = np.unique(ranked.labels[ids], return_inverse=True)[1].astype(np.int64)
    n_class = int(klass.max()) + 1
    # Finest cell: twice the median side, but coarse enough that keys fit in int64.
    per_axis = min(_MAX_CELLS_PER_AXIS, int(np.sqrt(2.0**60 / n_class)))
    c0 = max(2.0 * float(np.median(side)), extent / per_axis, np.finfo(np.float64).tiny)
    # The margin keeps a box strictly smaller than its cell despite rounding, so that it
    # never spans more than 2 cells per axis.
    level = np.ceil(np.log2(np.maximum(side * (1 + 1e-6) / c0, 1.0))).astype(np.int64)
    srcs, dsts = [], []
    for lv in np.unique(level).tolist():
        members = np.flatnonzero(level <= lv)
        s, d = _level_pairs(b, area[ids], klass, members, level[members] == lv,
                            c0 * 2.0**lv, (ox, oy), config)
        if len(ids) < len(boxes):  # else ids is the identity: no copy of the pairs
            s, d = ids[s], ids[d]
        srcs.append(s)
        dsts.append(d)
    return _cat(srcs), _cat(dsts)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` without copying a single part (pairs can take gigabytes)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _level_pairs(
    b: np.ndarray,
    area: np.ndarray,
    klass: np.ndarray,
    members: np.ndarray,
    own: np.ndarray,
    cell: float,
    origin: tuple[float, float],
    config: MergeConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Matching pairs found on one grid level, as indices into ``b`` (lower index first).

    ``members`` are the boxes no larger than a cell; ``own`` marks those of this level. A
    pair is formed only if at least one box is of this level (smaller pairs belong to a
    finer level), so each pair is found at exactly one level and in one cell.
    """
    ox, oy = origin
    mb = b[members]
    cx0 = np.floor((mb[:, 0] - ox) / cell).astype(np.int64)
    cy0 = np.floor((mb[:, 1] - oy) / cell).astype(np.int64)
    cx1 = np.floor((mb[:, 2] - ox) / cell).astype(np.int64)
    cy1 = np.floor((mb[:, 3] - oy) / cell).astype(np.int64)
    ncx = int(cx1.max()) + 1
    ncy = int(cy1.max()) + 1
    # Each box spans at most 2 x 2 cells at this level: register the 4 candidates, mask.
    reg_box, reg_cx, reg_cy = [], [], []
    for dx in (0, 1):
        for dy in (0, 1):
            m = (cx0 + dx <= cx1) & (cy0 + dy <= cy1)
            reg_box.append(np.flatnonzero(m))
            reg_cx.append(cx0[m] + dx)
            reg_cy.append(cy0[m] + dy)
    ent = np.concatenate(reg_box)  # position in members
    ecx = np.concatenate(reg_cx)
    ecy = np.concatenate(reg_cy)
    key = (klass[members[ent]] * ncy + ecy) * ncx + ecx
    # Within a cell, boxes of this level first: each pairs with everything after it.
    order = np.argsort(key * 2 + (~own[ent]).astype(np.int64), kind="stable")
    ent, ecx, ecy, key = ent[order], ecx[order], ecy[order], key[order]
    n_ent = len(ent)
    cell_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    cell_end = np.r_[cell_start[1:], n_ent]
    sizes = cell_end - cell_start
    end_of = np.repeat(cell_end, sizes)
    pos = np.arange(n_ent)
    count = np.where(own[ent], end_of - pos - 1, 0)
    firsts = np.flatnonzero(count)
    if not len(firsts):
        empty = np.zeros(0, np.int64)
        return empty, empty
    out_s, out_d = [], []
    # Batch entries so that at most ~_PAIR_BATCH candidate pairs exist at once.
    cum = np.cumsum(count[firsts])
    bounds = np.searchsorted(cum, np.arange(_PAIR_BATCH, int(cum[-1]), _PAIR_BATCH), "right")
    for chunk in np.split(firsts, np.unique(bounds)):
        if not len(chunk):
            continue
        cnt = count[chunk]
        p = np.repeat(chunk, cnt)
        q = p + 1 + np.arange(len(p)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        i = members[ent[p]]
        j = members[ent[q]]
        # Report the pair only in the cell holding its intersection's top-left corner.
        rx = np.maximum(b[i, 0], b[j, 0])
        ry = np.maximum(b[i, 1], b[j, 1])
        home = (np.floor((rx - ox) / cell).astype(np.int64) == ecx[p]) & (
            np.floor((ry - oy) / cell).astype(np.int64) == ecy[p]
        )
        i, j = i[home], j[home]
        hit = _pair_overlap(b[i], b[j], area[i], area[j], config.metric) >= config.threshold
        i, j = i[hit], j[hit]
        out_s.append(np.minimum(i, j))
        out_d.append(np.maximum(i, j))
    return _cat(out_s), _cat(out_d)


def _pair_overlap(
    a: np.ndarray, b: np.ndarray, area_a: np.ndarray, area_b: np.ndarray, metric: str
) -> np.ndarray:
    """Row-wise IoU or IOS of two ``[M, 4]`` arrays.

    Same arithmetic, in the same order, as ``boxes.overlap_one_to_many``, so that a pair
    sitting exactly at the threshold is decided the same way as there.
    """
    ix1 = np.maximum(a[:, 0], b[:, 0])
    iy1 = np.maximum(a[:, 1], b[:, 1])
    ix2 = np.minimum(a[:, 2], b[:, 2])
    iy2 = np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, inter / denom, 0.0)
