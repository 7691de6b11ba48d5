"""The common OpenVINO detector output: ``[1, 1, N, 7]`` rows from a DetectionOutput op.

Each row is ``(image_id, label, conf, x1, y1, x2, y2)`` with coordinates normalised to
0..1; the list ends early at the first row whose image_id is negative. Open Model Zoo's
newer detectors instead emit ``boxes [N, 5]`` (x1, y1, x2, y2, conf) in input pixels plus
a separate ``labels [N]``; both are accepted. Label ids are kept as the model emits them
(for an SSD with background id 0, real classes start at 1), so a ``<model>.txt`` labels
file beside the model lists names by those ids.
"""

from __future__ import annotations

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.models.catalog import ModelSpec
from zmqvision.models.ssd import multiclass_nms


def output_order(outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
    """The ``[..., 7]`` output, or the ``[N, 5]`` boxes plus (if present) ``[N]`` labels."""
    shapes = [shape for _, shape in outputs]
    for i, shape in enumerate(shapes):
        if shape and shape[-1] == 7:
            return [i]
    for i, shape in enumerate(shapes):
        if shape and shape[-1] == 5:
            n = int(np.prod(shape[:-1]))
            labels = [j for j, s in enumerate(shapes) if j != i and int(np.prod(s)) == n]
            return [i] + labels[:1]
    raise ValueError(f"outputs {shapes}: no [1,1,N,7] or [N,5] detection output")


def decode(outputs: list[np.ndarray], spec: ModelSpec, score_threshold: float) -> Detections:
    """Rows above the threshold, in model-input pixels, with in-tile per-class NMS."""
    width, height = spec.input_size
    raw = outputs[0]
    if raw.shape[-1] == 7:
        rows = raw.reshape(-1, 7).astype(np.float64)
        end = np.nonzero(rows[:, 0] < 0)[0]
        if len(end):
            rows = rows[: end[0]]
        rows = rows[rows[:, 2] >= score_threshold]
        boxes = rows[:, 3:7] * [width, height, width, height]
        scores, labels = rows[:, 2], rows[:, 1].astype(np.int64)
    else:
        rows = raw.reshape(-1, 5).astype(np.float64)
        keep = rows[:, 4] >= score_threshold
        labels = (
            outputs[1].reshape(-1)[keep].astype(np.int64)
            if len(outputs) > 1
            else np.zeros(int(keep.sum()), np.int64)
        )
        boxes, scores = rows[keep, :4], rows[keep, 4]
    if len(scores) == 0:
        return Detections.empty()
    boxes = np.clip(boxes, 0.0, [width, height, width, height])
    return multiclass_nms(boxes, scores, labels, spec.nms_threshold, max_detections=len(scores))
