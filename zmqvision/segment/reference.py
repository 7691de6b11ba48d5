"""The single-process reference: plan an image's tiles, infer them here, stitch them.

The distributed pipeline cuts the same tiles (``plan_segmentation`` + ``tiling.cut_tile``),
infers them on workers with the same ``Segmenter`` graph and feeds the sink's
``Stitcher`` with what comes back; its masks must equal what ``segment_image`` gives.

Tiling choice: an image that fits in ``FIT`` × the model input (each side) is segmented
whole, resized to the input — a segmentation network needs context more than pixels, and
one view has no seams at all. A larger image is cut into a grid at the model's input
scale (cuts of the input size, one image pixel per model pixel) with ``OVERLAP``, so
memory and time grow with the area and nothing is shrunk. ``cut`` overrides the cut size
(image pixels; each cut is resized to the input), e.g. to see more context per tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zmqvision.segment.outputs import MaskOutputs
from zmqvision.segment.stitch import Stitcher
from zmqvision.tiling import Tile, cut_tile, plan_scales

if TYPE_CHECKING:  # OpenVINO only where a model runs: the ventilator plans without it
    from zmqvision.segment.runtime import Segmenter

FIT = 2.0
OVERLAP = 0.25


def plan_segmentation(width: int, height: int, input_size: tuple[int, int],
                      cut: tuple[int, int] | None = None,
                      overlap: float = OVERLAP) -> list[Tile]:
    """The tiles of a ``width`` × ``height`` image (see the module docstring)."""
    in_w, in_h = input_size
    if cut is None:
        if width <= FIT * in_w and height <= FIT * in_h:
            return plan_scales(width, height, [None], overlap)
        cut = (in_w, in_h)
    return plan_scales(width, height, [cut], overlap)


@dataclass
class SegmentResult:
    """``labels`` u8 ``[h, w]`` (None unless kept), per-class ``counts``, the record's
    ``segmentation`` value, and the blended ``scores`` ``[h, w, C]`` when kept."""

    labels: np.ndarray | None
    counts: np.ndarray
    record: dict
    tiles: list[Tile]
    scores: np.ndarray | None = None


def segment_image(
    pixels: np.ndarray,
    segmenter: Segmenter,
    *,
    cut: tuple[int, int] | None = None,
    overlap: float = OVERLAP,
    tiles: Sequence[Tile] | None = None,
    png: str | Path | None = None,
    rle: bool = False,
    keep_labels: bool = True,
    keep_scores: bool = False,
    strip_rows: int | None = None,
) -> SegmentResult:
    """Segment a u8 ``[h, w, 3]`` RGB image in this process, tile by tile, with the same
    stitching the sink does. ``tiles`` replaces the default plan (then ``overlap`` must
    be the one it was planned with: the feather width follows it)."""
    h, w = pixels.shape[:2]
    spec = segmenter.spec
    plan = list(tiles) if tiles is not None else plan_segmentation(
        w, h, spec.input_size, cut, overlap)
    stitcher = Stitcher(w, h, plan, spec.input_size, segmenter.channels, overlap=overlap,
                        threshold=spec.score_threshold, strip_rows=strip_rows,
                        keep_scores=keep_scores)
    outputs = MaskOutputs(w, h, spec.labels, png=png, rle=rle)
    labels = np.empty((h, w), np.uint8) if keep_labels else None
    scores = np.empty((h, w, segmenter.channels), np.float32) if keep_scores else None
    try:
        for tile in plan:
            crop, _ = cut_tile(pixels, tile, spec.input_size)
            for strip in stitcher.add(tile.index, segmenter.infer(crop)):
                outputs.feed(strip)
                rows = slice(strip.y0, strip.y0 + len(strip.labels))
                if labels is not None:
                    labels[rows] = strip.labels
                if scores is not None:
                    scores[rows] = strip.scores
        record = outputs.finish(stitcher.counts)
    except BaseException:
        outputs.abort()
        raise
    return SegmentResult(labels, stitcher.counts.copy(), record, plan, scores)
