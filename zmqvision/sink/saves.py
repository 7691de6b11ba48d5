"""Computed results into the result cache as images complete (docs/cache.md), with a
classification ``--embed`` job's embeddings (one float32 row per tile), a two-stage
job's objects with their points and stage-2 answers (``tasks.stage2.cache_data``) and a
segmentation job's mask file and class counts (``tasks.segmentation.cache_data``)."""

from __future__ import annotations

import logging

import numpy as np

from zmqvision import protocol
from zmqvision.boxes import Detections
from zmqvision.cache import ResultCache
from zmqvision.sink.jobs import ImageState, JobState
from zmqvision.tasks import segmentation, stage2

log = logging.getLogger("zmqvision.sink")

# A reader's texts travel in the header of a hit's zv.image (at most
# protocol.MAX_HEADER_BYTES, 1 MiB, UTF-8 up to 4 bytes a character): an image with more
# text than this is computed on every run rather than cached.
MAX_CACHED_TEXT_CHARS = 128 * 1024


class ResultSaver:
    def __init__(self, cache: ResultCache | None) -> None:
        self.cache = cache
        self.masks_not_kept = 0  # segmentation masks too big (or unreadable) to keep

    def save(self, job: JobState, img: ImageState, dets: Detections | None) -> None:
        """Every success; never a failure (done again on every run, so a record is never
        ``"cached": true`` beside an error), nor a result that came from the cache."""
        info = img.info
        if (self.cache is None or info.hash is None or info.cached is not None
                or img.error is not None or not job.task.cacheable(job.task_settings)):
            return
        embeddings = s2 = mask = None
        if job.task_settings.embed:  # one vector per tile, in tile order
            if sorted(img.embeddings) != list(range(info.tiles)):
                return  # (check_part makes every tile bring one: never here)
            embeddings = np.stack([img.embeddings[i] for i in range(info.tiles)])
        if job.stage2 is not None:
            if img.objects is None or len(img.answers) != len(img.objects):
                return  # (finish_image comes once every object has its answer: never here)
            # Every object with its points and answer, not the record's rows: the record
            # is made again from them (identities from the gallery of that moment).
            dets, s2 = img.objects, stage2.cache_data(job.stage2, img.objects, img.answers)
            if s2.texts and sum(map(len, s2.texts)) > MAX_CACHED_TEXT_CHARS:
                return  # its announcement's header would pass protocol.MAX_HEADER_BYTES
        if job.task.name == "segmentation":
            mask = self._mask(img)
            if mask is None:
                return
        self.cache.save(job.fingerprint, protocol.frame_hash(info.hash, info.frame),
                        model=job.model,
                        width=info.width, height=info.height, tiles=info.tiles,
                        detections=dets, embeddings=embeddings, stage2=s2, segment=mask)

    def _mask(self, img: ImageState) -> protocol.SegmentCached | None:
        """A segmentation image's mask file and counts, or None: no file was written (no
        ``--masks``), or it is too big to keep (logged once at info, then at debug)."""
        value = (img.fields or {}).get("segmentation")
        if value is None:
            return None  # (a finished image always has it: never here)
        try:
            return segmentation.cache_data(value, img.info.width, img.info.height)
        except (ValueError, OSError) as exc:
            self.masks_not_kept += 1
            (log.info if self.masks_not_kept == 1 else log.debug)(
                "result cache: %s; this image's mask is not kept, a later run computes it "
                "again", exc)
            return None
