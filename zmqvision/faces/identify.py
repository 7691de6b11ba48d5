"""The single-process reference: image → faces, each with its box, five points,
embedding and name (or None).

detect (tiles, CenterFace with landmarks) → map to image pixels → merge duplicates
across tiles → align each face from the ORIGINAL image → embed → match in the gallery.
The distributed two-stage pipeline is meant to give the same answers: its workers run
the same ``detect_tile`` per tile, its sink the same merge, and the second stage the
same ``align`` + ``FaceEmbedder`` + ``Gallery.identify``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.faces.align import align_many
from zmqvision.merge import MergeConfig, merge
from zmqvision.models import centerface
from zmqvision.tiling import Tile, cut_tile, plan_scales, points_to_image_coords, to_image_coords

if TYPE_CHECKING:
    from zmqvision.faces.embed import FaceEmbedder
    from zmqvision.faces.gallery import Gallery
    from zmqvision.models.runtime import Detector


@dataclass(frozen=True)
class Face:
    """One face found in an image: image pixels, unit embedding, best match or None."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray  # [5, 2]
    embedding: np.ndarray  # [D] float32, unit length
    name: str | None
    similarity: float  # to the best enrolled person (also when below the threshold)

    def record(self) -> dict:
        """JSON-able: what a result record would carry per face."""
        return {"box": [round(float(v), 2) for v in self.box], "score": round(self.score, 4),
                "landmarks": np.round(self.landmarks, 2).tolist(), "name": self.name,
                "similarity": round(self.similarity, 4)}


def detect_tile(detector: Detector, pixels: np.ndarray,
                score_threshold: float | None = None) -> Detections:
    """CenterFace on one letterboxed tile, with landmarks (model-input pixels)."""
    if detector.spec.family != "centerface":
        raise ValueError(f"face landmarks need CenterFace, not {detector.spec.ref}")
    request = detector.compiled.create_infer_request()
    request.infer({0: detector.input_tensor(pixels)})
    thr = detector.spec.score_threshold if score_threshold is None else float(score_threshold)
    return centerface.decode(detector.outputs_of(request), detector.spec, thr, landmarks=True)


def default_scales(detector: Detector) -> list[tuple[int, int] | None]:
    """Cuts of the model input (one image pixel per model pixel: small faces keep their
    pixels) and the whole image shrunk (a face larger than a cut is seen whole)."""
    return [detector.input_size, None]


def detect_faces(
    image: np.ndarray,
    detector: Detector,
    *,
    scales: Sequence[tuple[int, int] | None] | None = None,
    overlap: float = 0.2,
    merge_config: MergeConfig = MergeConfig(),
    score_threshold: float | None = None,
) -> Detections:
    """Faces with landmarks in image pixels, merged across tiles, best score first."""
    h, w = image.shape[:2]
    tiles: list[Tile] = plan_scales(w, h, scales or default_scales(detector), overlap)
    parts = []
    for tile in tiles:
        pixels, s = cut_tile(image, tile, detector.input_size)
        d = detect_tile(detector, pixels, score_threshold)
        if len(d):
            assert d.landmarks is not None
            parts.append(Detections(to_image_coords(d.boxes, tile.box, s), d.scores, d.labels,
                                    points_to_image_coords(d.landmarks, tile.box, s)))
    return merge(Detections.concat(parts), merge_config)


def identify_faces(
    image: np.ndarray,
    detector: Detector,
    embedder: FaceEmbedder,
    gallery: Gallery,
    *,
    threshold: float | None = None,
    **detect_options,
) -> list[Face]:
    """Every face in ``image`` (uint8 ``[H, W, 3]`` RGB) with the enrolled person it is,
    or None below ``threshold`` (the gallery's calibrated default when None)."""
    dets = detect_faces(image, detector, **detect_options)
    if not len(dets):
        return []
    assert dets.landmarks is not None
    embeddings = embedder.embed(align_many(image, dets.landmarks))
    matches = gallery.best(embeddings)
    thr = gallery.threshold if threshold is None else float(threshold)
    faces = []
    for i, (name, sim) in enumerate(matches):
        faces.append(Face(tuple(float(v) for v in dets.boxes[i]), float(dets.scores[i]),
                          dets.landmarks[i], embeddings[i],
                          name if name is not None and sim >= thr else None, sim))
    return faces


class NoFace(ValueError):
    """A photo given for enrolment shows no face the detector finds."""


def largest_face_embedding(image: np.ndarray, detector: Detector, embedder: FaceEmbedder,
                           name: str = "image", **detect_options) -> tuple[np.ndarray, dict]:
    """The embedding of the largest face in ``image`` (an enrolment photo) and what was
    seen (box, score, how many faces); ``NoFace`` when there is none."""
    dets = detect_faces(image, detector, **detect_options)
    if not len(dets):
        raise NoFace(f"{name}: no face found")
    assert dets.landmarks is not None
    b = dets.boxes
    i = int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
    emb = embedder.embed(align_many(image, dets.landmarks[i:i + 1]))[0]
    seen = {"box": [round(float(v), 1) for v in b[i]], "score": round(float(dets.scores[i]), 3),
            "faces": len(dets)}
    return emb, seen
