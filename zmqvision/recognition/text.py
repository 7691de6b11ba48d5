"""Text lines: the DB detector (stage 1) and ``read_text``, the single-process reference
(detect lines → crop each from the original → read with PP-OCRv4's CTC reader).

The detector (catalog ``ppocr-v4-det``) is PaddleOCR's DB ("Differentiable
Binarization"): it outputs a text probability map at the input's own size,
``[N, 1, H, W]``. Its post-processing, as PaddleOCR's ``DBPostProcess`` (with
rapidocr-onnxruntime's settings) but without OpenCV:

1. threshold the map (``pixel_threshold``, 0.3) and dilate by a 2 × 2 square;
2. connected regions (``regions.label_runs``, 8-connected as OpenCV's contours);
3. each region's minimum-area rectangle (``geometry.min_area_rect``); regions whose
   short side is under ``min_size`` px are dropped;
4. score = the region's mean probability (PaddleOCR's "slow" score); below
   ``box_threshold`` (the spec's ``score_threshold``) dropped;
5. "unclip": DB's map covers a shrunk core of each line, so the rectangle is grown by
   ``area * unclip_ratio / perimeter`` on every side (1.6, rapidocr's value).

Boxes are the rectangles' axis-aligned bounds; ``landmarks`` carry the rotated
rectangles ``[N, 4, 2]`` (top-left, top-right, bottom-right, bottom-left).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zmqvision.boxes import Detections, overlap_one_to_many
from zmqvision.merge import MergeConfig, merge
from zmqvision.models.catalog import CATALOG, ModelSpec
from zmqvision.openvino_import import import_openvino
from zmqvision.recognition.ctc import CtcReader
from zmqvision.recognition.geometry import crop_quad, expand_rect, min_area_rect, quad_size
from zmqvision.recognition.regions import label_runs
from zmqvision.recognition.runtime import compile_pixels_model, u8_tensor
from zmqvision.tiling import cut_tile, plan_scales, points_to_image_coords, to_image_coords

ov = import_openvino()


@dataclass(frozen=True)
class DbConfig:
    """DB post-processing settings (PaddleOCR's names in the comments)."""

    pixel_threshold: float = 0.3  # thresh
    box_threshold: float = 0.5  # box_thresh
    unclip_ratio: float = 1.6  # unclip_ratio
    min_size: float = 3.0  # min_size: shortest side of a kept rectangle, map pixels
    max_candidates: int = 1000  # max_candidates
    dilate: bool = True  # use_dilation


def db_boxes(prob: np.ndarray, config: DbConfig = DbConfig()) -> Detections:
    """Text lines in a ``[H, W]`` probability map (its own pixels): axis-aligned boxes,
    scores, label 0 and the rotated rectangles ``[N, 4, 2]`` as landmarks."""
    mask = prob > config.pixel_threshold
    if config.dilate:  # OpenCV's 2 x 2 dilation: a pixel also lights its right/lower side
        mask[1:, :] |= mask[:-1, :]
        mask[:, 1:] |= mask[:, :-1]
    runs = label_runs(mask)
    if runs.count == 0:
        return Detections.empty()
    sums, pixels = runs.region_sums(prob)
    scores = sums / np.maximum(pixels, 1)
    order = np.argsort(runs.label, kind="stable")
    bounds = np.searchsorted(runs.label[order], np.arange(runs.count + 1))
    quads, kept = [], []
    candidates = np.argsort(-pixels, kind="stable")[:config.max_candidates]
    for region in candidates:
        if scores[region] < config.box_threshold:
            continue
        idx = order[bounds[region]:bounds[region + 1]]
        r, a, b = runs.row[idx], runs.start[idx], runs.stop[idx]
        pts = np.concatenate([np.stack([a, r], 1), np.stack([b, r], 1),
                              np.stack([a, r + 1], 1), np.stack([b, r + 1], 1)])
        rect, w, h = min_area_rect(pts.astype(np.float64))
        if min(w, h) < config.min_size:
            continue
        grown = expand_rect(rect, config.unclip_ratio)
        if min(quad_size(grown)) < config.min_size + 2:
            continue
        quads.append(grown)
        kept.append(region)
    if not kept:
        return Detections.empty()
    q = np.stack(quads)
    boxes = np.concatenate([q.min(axis=1), q.max(axis=1)], axis=1)
    return Detections(boxes, scores[kept].astype(np.float32), np.zeros(len(kept), np.int32), q)


def output_order(outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
    """DB has one output, the probability map."""
    if len(outputs) != 1:
        raise ValueError(f"a DB text detector has one output, got {len(outputs)}")
    return [0]


def decode_outputs(outputs: list[np.ndarray], spec: ModelSpec, score_threshold: float
                   ) -> Detections:
    """``models.runtime``'s decoder for family ``db``: one tile's probability map → its
    lines with their rotated rectangles, as ``TextDetector.detect`` (``score_threshold``
    is DB's box threshold, the spec's by default)."""
    return db_boxes(outputs[0][0, 0], DbConfig(box_threshold=score_threshold))


class TextDetector:
    """The compiled DB text detector: ``detect(pixels)`` → lines in those pixels."""

    def __init__(
        self,
        spec: ModelSpec | str = "ppocr-v4-det",
        *,
        config: DbConfig | None = None,
        device: str = "CPU",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        core: ov.Core | None = None,
    ) -> None:
        spec = CATALOG[spec] if isinstance(spec, str) else spec
        if spec.task != "text-detection":
            raise ValueError(f"model {spec.ref} is a {spec.task} model, not a text detector")
        self.spec = spec
        self.input_size = spec.input_size
        self.config = config or DbConfig(box_threshold=spec.score_threshold)
        pre = spec.preprocess
        self.compiled = compile_pixels_model(spec, mean=[pre.mean] * 3, scale=[pre.scale] * 3,
                                             device=device, threads=threads,
                                             cache_dir=cache_dir, core=core)
        self._request = self.compiled.create_infer_request()

    def probability(self, pixels: np.ndarray) -> np.ndarray:
        """The ``[H, W]`` text probability map of a uint8 RGB tile whose sides are
        multiples of 32."""
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"pixels must be uint8 [H, W, 3], got {pixels.dtype} "
                             f"{pixels.shape}")
        if pixels.shape[0] % 32 or pixels.shape[1] % 32:
            raise ValueError(f"DB needs sides that are multiples of 32, got {pixels.shape[:2]}")
        self._request.infer({0: u8_tensor(np.ascontiguousarray(pixels)[None])})
        return self._request.get_output_tensor(0).data[0, 0]

    def detect(self, pixels: np.ndarray) -> Detections:
        """Text lines in a tile (model-input pixels), rotated rectangles as landmarks."""
        return db_boxes(self.probability(pixels), self.config)


@dataclass(frozen=True)
class TextLine:
    """One line read in an image: box and rectangle in image pixels, what it says."""

    box: tuple[float, float, float, float]
    score: float  # the detector's: mean text probability of the region
    quad: np.ndarray  # [4, 2]: top-left, top-right, bottom-right, bottom-left
    text: str
    confidence: float  # the reader's: mean probability of its characters

    def record(self) -> dict:
        """JSON-able: what a result record would carry per line."""
        return {"box": [round(float(v), 2) for v in self.box], "score": round(self.score, 4),
                "quad": np.round(self.quad, 2).tolist(), "text": self.text,
                "confidence": round(self.confidence, 4)}


def detect_text(
    image: np.ndarray,
    detector: TextDetector,
    *,
    scales: Sequence[tuple[int, int] | None] | None = None,
    overlap: float = 0.2,
    merge_config: MergeConfig = MergeConfig(),
) -> Detections:
    """Stage 1: text lines in image pixels, found per tile, merged across tiles, and
    the pieces of a line longer than the tiles' overlap joined (``join_lines``)."""
    h, w = image.shape[:2]
    tiles = plan_scales(w, h, scales or [detector.input_size, None], overlap)
    parts = []
    for tile in tiles:
        pixels, s = cut_tile(image, tile, detector.input_size)
        d = detector.detect(pixels)
        if len(d):
            assert d.landmarks is not None
            parts.append(Detections(to_image_coords(d.boxes, tile.box, s), d.scores, d.labels,
                                    points_to_image_coords(d.landmarks, tile.box, s)))
    return join_lines(merge(Detections.concat(parts), merge_config))


@dataclass(frozen=True)
class LineJoin:
    """When two merged boxes are pieces of one text line cut by a tile border: they
    overlap along x (the pieces share the tiles' overlap band), they cover the same rows
    (vertical overlap over the lower box's height ≥ ``rows``) and are of like height
    (shorter over taller ≥ ``heights``)."""

    rows: float = 0.6
    heights: float = 0.6


def join_lines(dets: Detections, config: LineJoin = LineJoin()) -> Detections:
    """Join the pieces of lines cut by tile borders into whole lines.

    The overlap merge (IOS 0.5) fuses a piece with the line's whole copy from a
    neighbouring tile; but a line longer than the tiles' overlap band is whole in no tile,
    and its two pieces share only the band: their IOS is band / shorter piece, under 0.5
    once the shorter piece is over twice the band (measured: a 1,000 px line across a
    960 px tile border came out as two lines). Pieces of one line are level and overlap
    along x; lines above or below each other do not share rows, and words of a row that
    do not touch stay apart. Each group of pieces becomes its union box with the best
    score, its points that box's corners (``line_quads`` then crops the box). Groups are
    found by a sweep along x (O(N log N + touching pairs)); the result keeps the input's
    order (each group where its first piece was)."""
    n = len(dets)
    if n < 2:
        return dets
    b = dets.boxes
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    active: list[int] = []
    for i in np.argsort(b[:, 0], kind="stable"):
        active = [j for j in active if b[j, 2] > b[i, 0]]
        for j in active:
            rows = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
            hi, hj = b[i, 3] - b[i, 1], b[j, 3] - b[j, 1]
            if (min(hi, hj) > 0 and rows >= config.rows * min(hi, hj)
                    and min(hi, hj) >= config.heights * max(hi, hj)):
                parent[root(i)] = root(j)
        active.append(int(i))
    roots = np.array([root(i) for i in range(n)])
    if len(np.unique(roots)) == n:
        return dets
    first = {}
    for i, r in enumerate(roots):
        first.setdefault(int(r), i)
    boxes, scores, labels, quads = [], [], [], []
    for r, i in sorted(first.items(), key=lambda kv: kv[1]):
        members = np.flatnonzero(roots == r)
        if len(members) == 1:
            boxes.append(b[i])
            quads.append(dets.landmarks[i] if dets.landmarks is not None else
                         _rect(b[i]))
        else:
            box = np.concatenate([b[members, :2].min(0), b[members, 2:].max(0)])
            boxes.append(box)
            quads.append(_rect(box))
        scores.append(dets.scores[members].max())
        labels.append(dets.labels[i])
    return Detections(np.stack(boxes), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int32), np.stack(quads))


def _rect(box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def reading_order(boxes: np.ndarray, indices: Sequence[int]) -> list[int]:
    """``indices`` of lines top to bottom (rows of 10 px), then left to right."""
    return sorted(indices, key=lambda i: (round(float(boxes[i][1]) / 10), float(boxes[i][0])))


def line_quads(dets: Detections, agree: float = 0.8) -> np.ndarray:
    """``[N, 4, 2]``: each merged line's rotated rectangle when its bounds agree with the
    merged box (IoU ≥ ``agree``), else the merged box itself (a line cut by a tile border
    was fused from pieces; the largest piece's rectangle would lose the rest)."""
    out = np.empty((len(dets), 4, 2))
    for i, box in enumerate(dets.boxes):
        x0, y0, x1, y1 = box
        rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        q = None if dets.landmarks is None else dets.landmarks[i]
        if q is not None:
            qb = np.concatenate([q.min(axis=0), q.max(axis=0)])
            if overlap_one_to_many(box, qb[None])[0] >= agree:
                rect = q
        out[i] = rect
    return out


def line_crops(image: np.ndarray, quads: np.ndarray) -> list[np.ndarray]:
    """Stage 2's input: each line rectified from the ORIGINAL ``image``; a line taller
    than 1.5 × its width (vertical text) is turned to read left to right, as PaddleOCR
    does."""
    crops = []
    for q in quads:
        c = crop_quad(image, q)
        if c.shape[0] >= 1.5 * c.shape[1]:
            c = np.ascontiguousarray(np.rot90(c))
        crops.append(c)
    return crops


def read_text(
    image: np.ndarray,
    detector: TextDetector,
    reader: CtcReader,
    *,
    min_confidence: float = 0.5,
    **detect_options,
) -> list[TextLine]:
    """Every text line in ``image`` (uint8 ``[H, W, 3]`` RGB) with what it says, top to
    bottom then left to right, without spaces at their ends; lines read with confidence
    below ``min_confidence`` (rapidocr's text_score, 0.5) or as nothing are left out."""
    dets = detect_text(image, detector, **detect_options)
    if not len(dets):
        return []
    quads = line_quads(dets)
    reads = reader.read(line_crops(image, quads))
    # The reader may give a space at either end of a line (the unclipped margin): dropped.
    kept = [i for i, r in enumerate(reads) if r.text.strip() and r.confidence >= min_confidence]
    return [TextLine(tuple(float(v) for v in dets.boxes[i]), float(dets.scores[i]), quads[i],
                     reads[i].text.strip(), reads[i].confidence)
            for i in reading_order(dets.boxes, kept)]
