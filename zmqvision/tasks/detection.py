"""Detection: boxes. Exactly what zmqvision always did, behind the ``Task`` interface: the
scales plan (``zmqvision.scales``), letterboxed cuts, the model family's decoder, boxes
mapped to image pixels, and the sink's overlap merge. A detection job sends no task
settings (``job_option`` None) and its tiles ask nothing, so its messages, cache keys and
records are byte for byte those of before tasks existed."""

from __future__ import annotations

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.merge import merge
from zmqvision.scales import resolve_scales
from zmqvision.tasks.base import Decoded, Task, TaskSettings
from zmqvision.tiling import cut_tile, draft_reducer, points_to_image_coords, to_image_coords

# Families whose decoder gives every box its points: how many.
POINT_FAMILIES = {"retinaface-plates": 4, "db": 4}


class Detection(Task):
    name = "detection"

    def settings(self, top_k: int, embed: bool, grid: bool) -> TaskSettings:
        if embed:
            raise ValueError("--embed is for classification models")
        return TaskSettings()

    def job_option(self, settings):
        return None

    def scales(self, spec, *, tile_size, scales, min_size, full_pass):
        return resolve_scales(spec, tile_size=tile_size, scales=scales, min_size=min_size,
                              full_pass=full_pass)

    def cut(self, pixels, tile, input_size, reduced):
        return cut_tile(pixels, tile, input_size, reduced)

    def reducer(self, scales, overlap, input_size):
        return draft_reducer(scales, overlap, input_size)

    def decode(self, network, request, tile, score_threshold):
        if tile.task is not None and tile.task.get("points"):
            return Decoded(self._with_points(network, request, tile, score_threshold))
        dets = network.decode(network.outputs_of(request, copy=False), score_threshold)
        return Decoded(Detections(to_image_coords(dets.boxes, tile.box, tile.scale),
                                  dets.scores, dets.labels))

    @staticmethod
    def _with_points(network, request, tile, score_threshold) -> Detections:
        """A two-stage job's stage-1 tile (``Tile.task["points"]``): boxes and their
        points, both in image pixels (points not clipped: stage 2 reads the original
        image). CenterFace's five landmarks are decoded as the reference's
        ``faces.identify.detect_tile``; the reading detectors' decoders (plates-det,
        ppocr-v4-det: models.runtime FAMILIES) always give 4 points per box."""
        from zmqvision.models import centerface

        family = network.spec.family
        if family == "centerface":
            thr = (network.spec.score_threshold if score_threshold is None
                   else float(score_threshold))
            dets = centerface.decode(network.outputs_of(request), network.spec, thr,
                                     landmarks=True)
            k = 5
        elif family in POINT_FAMILIES:
            dets = network.decode(network.outputs_of(request), score_threshold)
            k = POINT_FAMILIES[family]
        else:
            raise ValueError(f"points need CenterFace, plates-det or ppocr-v4-det, not "
                             f"{network.spec.ref}")
        if not len(dets):  # nothing found: empty points of the right shape ([0, K, 2])
            return Detections(dets.boxes, dets.scores, dets.labels, np.zeros((0, k, 2)))
        return Detections(to_image_coords(dets.boxes, tile.box, tile.scale), dets.scores,
                          dets.labels,
                          points_to_image_coords(dets.landmarks, tile.box, tile.scale))

    def merge(self, parts, merge_config):
        if len(parts) == 1:  # a single-tile image: no copy (merge never writes its input)
            (only,) = parts.values()
            return merge(only, merge_config)
        # In tile order (not arrival order): equal to the single-process reference.
        return merge(Detections.concat([parts[i] for i in sorted(parts)]), merge_config)
