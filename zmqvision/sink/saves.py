"""Computed results into the result cache as images complete (docs/cache.md)."""

from __future__ import annotations

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
                or img.error is not None or job.task_settings.embed):
            return  # (an entry holds no embeddings: an --embed job is never looked up)
        self.cache.save(job.fingerprint, protocol.frame_hash(info.hash, info.frame),
                        model=job.model,
                        width=info.width, height=info.height, tiles=info.tiles,
                        detections=dets)
