"""MediaPipe BlazeFace (short range): 896 fixed-size anchors, regressions in pixels.

Anchors follow MediaPipe's SsdAnchorsCalculator options for face_detection_short_range:
strides 8 and 16 (the three stride-16 layers collapse into one 8x8 grid with 6 anchors
per cell), offset 0.5, fixed anchor size. Regressors are ``[dx, dy, w, h, 6 keypoints]``
in input pixels relative to the anchor centre, so boxes come out directly in the model's
input pixels. Keypoints are dropped: the pipeline only carries boxes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.models.catalog import ModelSpec
from zmqvision.models.nms import greedy_nms

# (stride, anchors per cell) after MediaPipe merges layers of equal stride
LAYERS = ((8, 2), (16, 6))
LOGIT_CLIP = 100.0


@lru_cache(maxsize=4)
def anchors(width: int = 128, height: int = 128) -> np.ndarray:
    """Anchor centres ``[896, 2]`` (x, y) in input pixels, MediaPipe's order (y, x, k)."""
    out = []
    for stride, per_cell in LAYERS:
        gh, gw = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        cx = (xs + 0.5) / gw * width
        cy = (ys + 0.5) / gh * height
        centres = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    result = np.concatenate(out).astype(np.float64)
    result.setflags(write=False)
    return result


def output_order(outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
    """Indices of regressors ``[1, 896, 16]`` and classificators ``[1, 896, 1]``."""
    last = [shape[-1] for _, shape in outputs]
    try:
        return [last.index(16), last.index(1)]
    except ValueError:
        raise ValueError(
            f"BlazeFace outputs {[s for _, s in outputs]} are not [1,896,16] and [1,896,1]"
        ) from None


def decode(outputs: list[np.ndarray], spec: ModelSpec, score_threshold: float) -> Detections:
    """Faces in model-input pixels from (regressors, classificators)."""
    regressors, logits = outputs[0], outputs[1]
    width, height = spec.input_size
    logits = np.clip(logits.reshape(-1).astype(np.float64), -LOGIT_CLIP, LOGIT_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    idx = np.nonzero(scores >= score_threshold)[0]
    if len(idx) == 0:
        return Detections.empty()
    reg = regressors.reshape(-1, regressors.shape[-1])[idx].astype(np.float64)
    centre = anchors(width, height)[idx] + reg[:, 0:2]
    half = reg[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    boxes = np.clip(boxes, 0.0, [width, height, width, height])
    keep = greedy_nms(boxes, scores[idx], spec.nms_threshold)
    return Detections.of(boxes[keep], scores[idx][keep], np.zeros(len(keep), np.int32))
