"""Computed results into the result cache as images complete (docs/cache.md)."""

from __future__ import annotations

from zmqvision.boxes import Detections
from zmqvision.cache import ResultCache
from zmqvision.cache.entry import detach_path
from zmqvision.sink.jobs import ImageState, JobState


class ResultSaver:
    def __init__(self, cache: ResultCache | None) -> None:
        self.cache = cache

    def save(self, job: JobState, img: ImageState, dets: Detections | None) -> None:
        """Every success, and an error only when the image's bytes cause it (a tile's
        failure may be transient: never cached). Not a result that came from the cache."""
        info = img.info
        if self.cache is None or info.hash is None or info.cached is not None:
            return
        error = None
        if img.error is not None:
            if info.error is None:
                return  # a tile failed (inference, model mismatch): may not happen again
            error = detach_path(info.error, info.path)
            if error is None:
                return
        self.cache.save(job.fingerprint, info.hash, model=job.model,
                        width=info.width, height=info.height, tiles=info.tiles,
                        detections=dets, error=error)
