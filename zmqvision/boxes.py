"""Detections as three parallel arrays, and the small box arithmetic every stage shares.

Arrays rather than lists of objects: decoders produce them with numpy, the wire carries
them as raw frames, and the merge sorts and indexes them without a Python loop per box.
Boxes are ``x1, y1, x2, y2`` in pixels, float64 so that image coordinates of very large
images keep sub-1e-4 precision through the shift from tile to image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Boxes ``[N, 4]`` float64, scores ``[N]`` float32, class ids ``[N]`` int32.

    ``landmarks``: optional ``[N, K, 2]`` float64 points (x, y) per detection, in the same
    pixels as the boxes (CenterFace's five face points: eyes, nose, mouth corners, as the
    viewer sees them). None when the decoder was not asked for them; every operation here
    (take, concat, the merge) carries them along with their box.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.labels.shape != (n,):
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, "
                f"scores {self.scores.shape}, labels {self.labels.shape}"
            )
        lm = self.landmarks
        if lm is not None and (lm.ndim != 3 or lm.shape[0] != n or lm.shape[2] != 2):
            raise ValueError(f"inconsistent detections: landmarks {lm.shape} for {n} boxes")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float64), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )

    @classmethod
    def of(cls, boxes, scores, labels, landmarks=None) -> Detections:
        """Build from anything array-like, coercing dtypes and shapes."""
        return cls(
            np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(scores, np.float32).reshape(-1),
            np.asarray(labels, np.int32).reshape(-1),
            None if landmarks is None else np.asarray(landmarks, np.float64),
        )

    def take(self, index) -> Detections:
        lm = None if self.landmarks is None else self.landmarks[index]
        return Detections(self.boxes[index], self.scores[index], self.labels[index], lm)

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        """All parts in order. Landmarks are kept only when every non-empty part has them
        (with the same number of points): a detection without its points cannot be
        given made-up ones."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections.empty()
        lms = [p.landmarks for p in parts]
        keep = all(m is not None and m.shape[1:] == lms[0].shape[1:] for m in lms)
        return Detections(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate(lms) if keep else None,
        )


def areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``[N, 4]`` boxes; degenerate boxes count as zero."""
    w = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return w * h


def overlap_one_to_many(box: np.ndarray, others: np.ndarray, metric: str = "iou") -> np.ndarray:
    """IoU (intersection over union) or IOS (intersection over the smaller area) of one box
    against many. IOS is what catches a half box cut by a tile border inside a whole one."""
    ix1 = np.maximum(box[0], others[:, 0])
    iy1 = np.maximum(box[1], others[:, 1])
    ix2 = np.minimum(box[2], others[:, 2])
    iy2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    a = areas(box[None, :])[0]
    b = areas(others)
    if metric == "iou":
        denom = a + b - inter
    elif metric == "ios":
        denom = np.minimum(a, b)
    else:
        raise ValueError(f"unknown match metric {metric!r} (iou or ios)")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, inter / denom, 0.0)
    return out


def nms_small(boxes: np.ndarray, scores: np.ndarray, threshold: float, metric: str = "iou"):
    """Greedy non-maximum suppression for the few hundred boxes of one tile.

    Quadratic in the worst case, which is fine inside a tile; whole images with many boxes
    go through ``zmqvision.merge`` instead. Returns kept indices, best score first; ties
    are broken by position so that the result never depends on input order.
    """
    n = len(scores)
    if n == 0:
        return np.zeros((0,), np.int64)
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))
    keep = []
    alive = np.ones(n, bool)
    for pos, i in enumerate(order):
        if not alive[i]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        rest = rest[alive[rest]]
        if len(rest):
            ov = overlap_one_to_many(boxes[i], boxes[rest], metric)
            alive[rest[ov >= threshold]] = False
    return np.asarray(keep, np.int64)


def pixel_reach(points: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels ``[x0, y0, x1, y1)`` a warp sampling at ``points`` (``[N, 2]``, image
    pixels) reads, with a pixel more on each side for bilinear taps, clipped to the image:
    what a crop cut from the original image needs of it. Empty (``x1 <= x0`` or
    ``y1 <= y0``) when the points lie wholly outside."""
    x0 = int(np.clip(np.floor(points[:, 0].min()) - 1, 0, width))
    y0 = int(np.clip(np.floor(points[:, 1].min()) - 1, 0, height))
    x1 = int(np.clip(np.ceil(points[:, 0].max()) + 2, 0, width))
    y1 = int(np.clip(np.ceil(points[:, 1].max()) + 2, 0, height))
    return x0, y0, x1, y1
