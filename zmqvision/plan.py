"""A job's settings, resolved once: the model spec, the cut sizes, and everything that
follows from them (the ``zv.job`` announcement, the tile plan of an image, the JPEG draft
factor, the result cache's lookup).

``JobSettings`` is what a caller chooses (per ``zmqvision run``, per ``Pool.submit``);
``JobPlan`` is the resolved form every part of the ventilator reads, so the catalog and
``scales.resolve_scales`` are consulted once per job rather than once per part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from zmqvision import io, protocol, tasks
from zmqvision.merge import MergeConfig
from zmqvision.scales import scales_json
from zmqvision.tiling import Tile

Reduce = Callable[[int, int], int]

# Image sizes whose tile plans (and draft factors) a JobPlan keeps: a folder of photos has
# a few sizes, each planned once instead of once (twice, with the draft factor) per image.
PLANNED_SIZES = 256


@dataclass(frozen=True)
class JobSettings:
    """Everything that shapes an image's record: two requests with equal settings can
    share a job (and the result cache) and give equal records for equal images."""

    model: str = "centerface"
    input_size: tuple[int, int] | None = None
    tile_size: tuple[int, int] | None = None  # None: the model's input size
    overlap: float = 0.2
    full_pass: bool = False
    # More cut sizes in one job: (w, h), "native" or "full" (see zmqvision.scales).
    scales: tuple[tuple[int, int] | str, ...] | None = None
    min_size: float | None = None  # smallest object in source px: plans the cut
    merge: MergeConfig = field(default_factory=MergeConfig)
    score_threshold: float | None = None
    max_pixels: int = io.DEFAULT_MAX_PIXELS
    # A file over this many bytes is not read: its record is a ``too_large`` error.
    max_file_bytes: int = io.DEFAULT_MAX_FILE_BYTES
    # Decode a JPEG at 1/2, 1/4 or 1/8 when every tile of it shrinks at least that much.
    jpeg_draft: bool = True
    # The task (zmqvision.tasks): None is the model's own; "detect"/"classify" say how a
    # user's model file is read. top_k and embed are classification's (--top-k, --embed).
    task: str | None = None
    top_k: int = 5
    embed: bool = False
    # A second stage (zmqvision.tasks.stage2): "identify" (--identify) recognises each
    # face found; ``gallery`` and ``identity_threshold`` are its gallery URL and threshold.
    stage2: str | None = None
    gallery: str | None = None
    identity_threshold: float | None = None

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def of(cls, config: JobSettings) -> JobSettings:
        """Just the settings of a config that extends them (``VentilateConfig``): equal
        settings make equal plans, whatever else the configs hold."""
        return cls(**{name: getattr(config, name) for name in cls.names()})


class JobPlan:
    """``JobSettings`` resolved against the model catalog (raises ``ValueError`` /
    ``scales.PlanError`` for settings that cannot work, before anything is sent)."""

    def __init__(self, settings: JobSettings) -> None:
        from zmqvision.models import resolve

        self.settings = settings
        self.spec = spec = resolve(settings.model, settings.input_size, settings.task)
        self.task = tasks.get(spec.task)
        self.task_settings = self.task.settings(settings.top_k, settings.embed,
                                                settings.tile_size is not None)
        self.scales = self.task.scales(spec, tile_size=settings.tile_size,
                                       scales=settings.scales, min_size=settings.min_size,
                                       full_pass=settings.full_pass)
        self.tile_size = next((s for s in self.scales if s is not None), spec.input_size)
        # What each tile asks the worker for (classification's top-k, embedding).
        self.tile_request = self.task.tile_request(self.task_settings)
        # A second stage: stage-1 tiles ask for their boxes' points.
        self.stage2 = None
        if settings.stage2 is not None:
            from zmqvision.tasks import stage2

            if self.task.name != "detection":
                raise ValueError(f"a second stage follows a detector, not {spec.task}")
            self.stage2 = stage2.plan(settings.stage2, spec.name, gallery=settings.gallery,
                                      threshold=settings.identity_threshold)
            self.tile_request = {"points": True}
        self._tiles: dict[tuple[int, int], list[Tile]] = {}  # by image size
        self._reducer: Reduce | None = None
        self._reduced: dict[tuple[int, int], int] = {}

    @property
    def model_ref(self) -> str:
        return self.spec.ref

    def job_start(self, job_id: str, records: str = "write",
                  secret: str = "") -> protocol.JobStart:
        """The job's ``zv.job``: everything that shapes its results (the cache key and
        every record's ``settings`` come from it), and the job's ``secret``
        (``protocol.new_job_secret``; "" for a start only read here, e.g. a cache key)."""
        s = self.settings
        options: dict = {"score_threshold": s.score_threshold}
        task = self.task.job_option(self.task_settings)
        if task is not None:  # detection: none, its JobStart unchanged
            options["task"] = task
        if self.stage2 is not None:  # part of every record's settings and of the cache key
            options["stage2"] = self.stage2.to_json()
        if records != "write":
            options["records"] = records
        return protocol.JobStart(
            job=job_id,
            model=self.spec.describe(),
            tiling={"tile_size": list(self.tile_size), "overlap": s.overlap,
                    "full_pass": None in self.scales,
                    "input_size": list(self.spec.input_size),
                    "scales": scales_json(self.scales), "min_size": s.min_size,
                    "jpeg_draft": s.jpeg_draft},
            merge={"method": s.merge.method, "metric": s.merge.metric,
                   "threshold": s.merge.threshold,
                   "class_agnostic": s.merge.class_agnostic},
            options=options,
            secret=secret,
        )

    def lookup_in(self, cache) -> Callable[[str], object] | None:
        """The result cache's lookup (content hash → entry or None) under these settings;
        None without a cache. The key's settings part is the same for every job of these
        settings (``cache.job_fingerprint`` reads no job id)."""
        if cache is None or not self.task.cacheable(self.task_settings):
            return None
        from zmqvision.cache import job_fingerprint

        fingerprint, ref = job_fingerprint(self.job_start("")), self.spec.ref
        embeddings = self.task_settings.embed
        # A two-stage job's entries keep each object's points and stage-2 answer (never
        # an identity: the sink matches cached embeddings against the gallery of now).
        needs = None
        if self.stage2 is not None:
            from zmqvision.tasks.stage2 import cache_needs

            needs = cache_needs(self.stage2)
        # A segmentation job's entries keep the mask file and class counts: one without
        # them is a miss (docs/cache.md, zmqvision.tasks.segmentation).
        masks = self.task.name == "segmentation"
        return lambda content_hash: cache.lookup(fingerprint, content_hash, ref,
                                                 embeddings=embeddings, stage2=needs,
                                                 segment=masks)

    def reducer(self) -> Reduce | None:
        """How far a JPEG of a given size may be reduced as it is decoded: by the factor
        every one of its tiles shrinks anyway (``tiling.draft_factor``)."""
        if not self.settings.jpeg_draft or self.stage2 is not None:
            return None  # a second stage crops from the full pixels (as its reference)
        if self._reducer is None:
            self._reducer = self.task.reducer(self.scales, self.settings.overlap,
                                              self.spec.input_size)
        return self._reduce

    def _reduce(self, width: int, height: int) -> int:
        # Called on the decoding threads: a dict's get and set are atomic, and a size
        # planned twice at once is planned alike.
        factor = self._reduced.get((width, height))
        if factor is None:
            factor = self._reducer(width, height)
            _keep(self._reduced, (width, height), factor)
        return factor

    def tiles(self, width: int, height: int) -> list[Tile]:
        """The image's tiles, as the task plans them (segmentation: whole or a grid).
        Planned once per size: the list is shared by every image of that size (read it,
        never change it)."""
        tiles = self._tiles.get((width, height))
        if tiles is None:
            tiles = self.task.plan(width, height, self.scales, self.settings.overlap,
                                   self.spec.input_size)
            _keep(self._tiles, (width, height), tiles)
        return tiles

    def cut(self, pixels: np.ndarray, tile: Tile, reduced: int) -> tuple[np.ndarray, float]:
        """A tile's pixels at the model's input size, as the task cuts them (detection
        letterboxes, classification stretches)."""
        return self.task.cut(pixels, tile, self.spec.input_size, reduced)


def _keep(memo: dict, key, value) -> None:
    """Remember ``value``, forgetting every size when more than ``PLANNED_SIZES`` came (a
    folder of all-different sizes plans each image as before)."""
    if len(memo) >= PLANNED_SIZES:
        memo.clear()
    memo[key] = value
