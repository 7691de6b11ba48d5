"""Detection: boxes. Exactly what zmqvision always did, behind the ``Task`` interface: the
scales plan (``zmqvision.scales``), letterboxed cuts, the model family's decoder, boxes
mapped to image pixels, and the sink's overlap merge. A detection job sends no task
settings (``job_option`` None) and its tiles ask nothing, so its messages, cache keys and
records are byte for byte those of before tasks existed."""

from __future__ import annotations

from zmqvision.boxes import Detections
from zmqvision.merge import merge
from zmqvision.scales import resolve_scales
from zmqvision.tasks.base import Task, TaskSettings
from zmqvision.tiling import cut_tile, draft_reducer, to_image_coords


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
        dets = network.decode(network.outputs_of(request), score_threshold)
        return Detections(to_image_coords(dets.boxes, tile.box, tile.scale), dets.scores,
                          dets.labels), None

    def merge(self, parts, merge_config):
        return merge(Detections.concat(list(parts.values())), merge_config)
