"""TF Object Detection API SSD (MobileNetV2, Open Images) as MediaPipe ships it.

The TFLite graph stops before post-processing: it emits raw box encodings against 1917
anchors and per-class logits. Anchors are TF's MultipleGridAnchorGenerator
(``create_ssd_anchors``): 6 layers on 19, 10, 5, 3, 2, 1 grids, scales 0.2..0.95, aspect
ratios 1, 2, 1/2, 3, 1/3 plus a square anchor at the geometric mean of this and the next
scale; the lowest layer uses the reduced set (0.1, 1), (s, 2), (s, 1/2).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.models.catalog import ModelSpec
from zmqvision.models.nms import greedy_nms

FEATURE_MAPS = (19, 10, 5, 3, 2, 1)
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)  # ty, tx, th, tw
MAX_DETECTIONS = 100


def _layer_specs() -> list[list[tuple[float, float]]]:
    n = len(FEATURE_MAPS)
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * i / (n - 1) for i in range(n)] + [1.0]
    specs = []
    for i in range(n):
        if i == 0:
            specs.append([(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)])
        else:
            layer = [(scales[i], ar) for ar in ASPECT_RATIOS]
            layer.append((float(np.sqrt(scales[i] * scales[i + 1])), 1.0))
            specs.append(layer)
    return specs


@lru_cache(maxsize=1)
def anchors() -> np.ndarray:
    """``[1917, 4]`` normalised anchors (yc, xc, h, w) in TF's order (layer, y, x, k)."""
    out = []
    for size, layer in zip(FEATURE_MAPS, _layer_specs(), strict=True):
        scales = np.array([s for s, _ in layer])
        ratios = np.sqrt(np.array([r for _, r in layer]))
        heights, widths = scales / ratios, scales * ratios
        centres = (np.arange(size) + 0.5) / size
        yc, xc, k = np.meshgrid(centres, centres, np.arange(len(layer)), indexing="ij")
        out.append(np.stack([yc, xc, heights[k], widths[k]], axis=-1).reshape(-1, 4))
    result = np.concatenate(out)
    result.setflags(write=False)
    return result


def output_order(outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
    """Indices of the box encodings ``[1, A, 4]`` and class logits ``[1, A, C]``."""
    names = [" ".join(n) for n, _ in outputs]
    boxes = next((i for i, n in enumerate(names) if "box_encodings" in n), None)
    classes = next((i for i, n in enumerate(names) if "class_predictions" in n), None)
    if boxes is None or classes is None:
        last = [shape[-1] for _, shape in outputs]
        boxes = last.index(4) if 4 in last else None
        classes = next((i for i, d in enumerate(last) if i != boxes), None)
    if boxes is None or classes is None:
        raise ValueError(f"SSD outputs {[s for _, s in outputs]}: no box encodings / logits")
    return [boxes, classes]


def decode_boxes(
    encodings: np.ndarray, width: int, height: int, index: np.ndarray | None = None
) -> np.ndarray:
    """Faster R-CNN box coder inverse: encodings of the anchors ``index`` (all if None)
    to x1, y1, x2, y2 in input pixels, clipped to the input like TF's post-processing."""
    a = anchors() if index is None else anchors()[index]
    ty, tx, th, tw = (encodings.astype(np.float64) / BOX_CODER_SCALES).T
    yc = ty * a[:, 2] + a[:, 0]
    xc = tx * a[:, 3] + a[:, 1]
    h = np.exp(th) * a[:, 2]
    w = np.exp(tw) * a[:, 3]
    boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    return np.clip(boxes, 0.0, 1.0) * [width, height, width, height]


def multiclass_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    max_detections: int = MAX_DETECTIONS,
) -> Detections:
    """NMS within each class, then best first (ties by label and position, for
    determinism), at most ``max_detections``. (Kept per class in ``nms_small``'s order,
    class by class, as a loop over the classes would: the final sort's ties fall back to
    that order.)"""
    kept = greedy_nms(boxes, scores, threshold, labels)
    if not len(kept):
        return Detections.empty()
    k = kept[np.argsort(labels[kept], kind="stable")]
    order = np.lexsort((boxes[k, 1], boxes[k, 0], labels[k], -scores[k]))[:max_detections]
    return Detections.of(boxes[k][order], scores[k][order], labels[k][order])


@lru_cache(maxsize=16)
def logit_floor(score_threshold: float) -> float:
    """A logit below which no score can reach the threshold, a little under the exact
    one: the sigmoid is monotonic, so candidates are chosen on the raw logits (no exp over
    all 1917 × 23 of them), and the exact test runs on those few in float64."""
    if score_threshold <= 0.0:
        return -np.inf
    if score_threshold >= 1.0:
        return 36.0  # float64's sigmoid is 1.0 from about 36.7 on
    return min(36.0, float(np.log(score_threshold / (1.0 - score_threshold)))) - 1e-3


def decode(outputs: list[np.ndarray], spec: ModelSpec, score_threshold: float) -> Detections:
    """Objects in model-input pixels; class 0 (background) dropped, ids shifted down by 1.

    Exactly the scores ``sigmoid(logit) >= threshold`` computed over the whole matrix in
    float64 would keep, in the same (anchor, class) order: the floor only skips logits
    that cannot pass."""
    encodings, logits = outputs[0], outputs[1]
    classes = logits.shape[-1]
    # Candidates on the whole (contiguous) matrix, background included, then dropped:
    # the flat indices come in (anchor, class) order, and a 1-D nonzero over a contiguous
    # mask is several times faster than a 2-D one over the strided [:, 1:] view.
    flat = np.flatnonzero(logits.reshape(-1) >= logit_floor(score_threshold))
    anchor_idx, label = np.divmod(flat, classes)
    real = label > 0
    anchor_idx, label = anchor_idx[real], label[real] - 1
    scores = 1.0 / (1.0 + np.exp(-logits.reshape(-1)[flat[real]].astype(np.float64)))
    keep = scores >= score_threshold
    anchor_idx, label, scores = anchor_idx[keep], label[keep], scores[keep]
    if len(anchor_idx) == 0:
        return Detections.empty()
    width, height = spec.input_size
    boxes = decode_boxes(encodings.reshape(-1, 4)[anchor_idx], width, height, anchor_idx)
    return multiclass_nms(boxes, scores, label, spec.nms_threshold)
