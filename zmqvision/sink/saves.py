"""Computed results into the result cache as images complete (docs/cache.md), with a
classification ``--embed`` job's embeddings (one float32 row per tile)."""

from __future__ import annotations

import numpy as np

from zmqvision import protocol
from zmqvision.boxes import Detections
from zmqvision.cache import ResultCache
from zmqvision.sink.jobs import ImageState, JobState


class ResultSaver:
    def __init__(self, cache: ResultCache | None) -> None:
        self.cache = cache

    def save(self, job: JobState, img: ImageState, dets: Detections | None) -> None:
        """Every success; never a failure (done again on every run, so a record is never
        ``"cached": true`` beside an error), nor a result that came from the cache."""
        info = img.info
        if (self.cache is None or info.hash is None or info.cached is not None
                or img.error is not None or not job.task.cacheable(job.task_settings)):
            return  # (an entry holds no masks: segmentation jobs are never looked up)
        embeddings = None
        if job.task_settings.embed:  # one vector per tile, in tile order
            if sorted(img.embeddings) != list(range(info.tiles)):
                return  # (check_part makes every tile bring one: never here)
            embeddings = np.stack([img.embeddings[i] for i in range(info.tiles)])
        self.cache.save(job.fingerprint, protocol.frame_hash(info.hash, info.frame),
                        model=job.model,
                        width=info.width, height=info.height, tiles=info.tiles,
                        detections=dets, embeddings=embeddings)
