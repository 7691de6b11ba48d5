"""The ``Task`` interface and the settings a job's task travels with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.tiling import Tile, plan_scales

# Classes one tile may return at most (also the bound the sink checks a result against).
MAX_TOP_K = 1000
Scale = tuple[int, int] | None
Reduce = Callable[[int, int], int]


class Decoded(NamedTuple):
    """What a worker's decoder makes of one tile: its rows (in image pixels) and, for
    the tasks that have one, the extra frame of its result: a classifier's embedding or
    a segmenter's score map (``protocol.Result.embedding`` / ``.scores``)."""

    detections: Detections
    embedding: np.ndarray | None = None
    scores: np.ndarray | None = None


@dataclass(frozen=True)
class MaskSettings:
    """Where the sink puts what a task makes beside the record (segmentation's masks):
    ``masks`` the directory of the PNGs (None: none written), ``rle`` whether records
    carry COCO RLE (``--format coco``), ``write`` whether the job's records are written
    at all (a publish-only job leaves no files)."""

    masks: str | None = None
    rle: bool = False
    write: bool = True


class ImageMerge:
    """An image's merge that runs as its tiles arrive (segmentation stitches strips as
    soon as their tiles are in, instead of holding every tile to the end)."""

    def add(self, index: int, result) -> str | None:
        """Take one tile's result (``protocol.Result``); why it cannot be used, or None."""
        raise NotImplementedError

    def finish(self) -> dict:
        """The record's fields for the image once every tile is in (ValueError: not so)."""
        raise NotImplementedError

    def abort(self) -> None:
        """The image failed or was withdrawn: drop what is held, remove partial files."""


@dataclass(frozen=True)
class TaskSettings:
    """What a job asks of its task beyond the model: for classification the number of
    classes per tile (``top_k``), whether the embedding comes too (``embed``) and whether
    the image is cut into a grid (``grid``: ``--tile`` given). Detection has none."""

    name: str = "detection"
    top_k: int = 5
    embed: bool = False
    grid: bool = False

    def to_json(self) -> dict:
        return {"name": self.name, "top_k": self.top_k, "embed": self.embed,
                "grid": self.grid}

    @classmethod
    def from_json(cls, raw: object) -> TaskSettings:
        """ValueError unless ``raw`` is a map of a known shape with sane values."""
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ValueError("task settings must be a map with a name")
        top_k, embed, grid = raw.get("top_k", 5), raw.get("embed", False), raw.get("grid", False)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"task top_k must be 1..{MAX_TOP_K}")
        if not isinstance(embed, bool) or not isinstance(grid, bool):
            raise ValueError("task embed and grid must be true or false")
        return cls(name=raw["name"], top_k=top_k, embed=embed, grid=grid)


class Task:
    """What one kind of model answer means, from the cut to the record (see the package
    docstring). Subclasses are stateless: one instance serves every job."""

    name = ""

    # ---------------------------------------------------------------- ventilator
    def settings(self, top_k: int, embed: bool, grid: bool) -> TaskSettings:
        return TaskSettings(name=self.name, top_k=top_k, embed=embed, grid=grid)

    def job_option(self, settings: TaskSettings) -> dict | None:
        """``JobStart.options["task"]``; None leaves it out (detection)."""
        return settings.to_json()

    def scales(self, spec, *, tile_size, scales, min_size, full_pass) -> tuple[Scale, ...]:
        raise NotImplementedError

    def cut(self, pixels: np.ndarray, tile: Tile, input_size: tuple[int, int],
            reduced: int) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def reducer(self, scales: Sequence[Scale], overlap: float,
                input_size: tuple[int, int]) -> Reduce:
        raise NotImplementedError

    def plan(self, width: int, height: int, scales: Sequence[Scale], overlap: float,
             input_size: tuple[int, int]) -> list[Tile]:
        """The tiles of a ``width`` × ``height`` image (the ventilator's, and the sink's
        when it must know them, as segmentation's stitcher does)."""
        return plan_scales(width, height, scales, overlap)

    def cacheable(self, settings: TaskSettings) -> bool:
        """Whether a result-cache entry (an image's rows, and a classifier's embeddings,
        one per tile) holds all a record of these settings needs; False: the job neither
        looks up nor saves."""
        return True

    def tile_request(self, settings: TaskSettings) -> dict | None:
        """``protocol.Tile.task``: what the worker returns for a tile; None: nothing
        beyond the model's default (and the tile's header is what it always was)."""
        return None

    # ---------------------------------------------------------------- worker
    def decode(self, network, request, tile, score_threshold: float | None) -> Decoded:
        """A finished infer request → the tile's rows in image pixels and its extra frame."""
        raise NotImplementedError

    # ---------------------------------------------------------------- sink
    def check_part(self, settings: TaskSettings, n_labels: int, detections: Detections,
                   embedding: np.ndarray | None) -> str | None:
        """Why a tile's payload cannot be this job's (the tile then counts as an error);
        None when it can. The wire already bounded sizes and refused non-finite numbers."""
        return None

    def merge(self, parts: dict[int, Detections], merge_config) -> Detections:
        raise NotImplementedError

    def image_merge(self, settings: TaskSettings, start, info, outputs: MaskSettings
                    ) -> ImageMerge | None:
        """A merge fed tile by tile for one image (``ImageMerge``), made when its first
        tile arrives; None (detection, classification): tiles are kept as rows and
        merged at the end (``merge``)."""
        return None

    def record_fields(self, settings: TaskSettings, detections: Detections | None,
                      embeddings: dict[int, np.ndarray], labels: Sequence[str],
                      score_threshold: float | None = None,
                      rows: Callable[[np.ndarray], int | None] | None = None) -> dict:
        """Fields a record of this task has beside the common ones (``detections`` is
        always there; ``results.make_record`` fills it for detection). ``detections``
        None: the image failed. ``rows`` (given for ``embed`` jobs only): writes a vector
        to the sink's ``--embed-file`` and returns its row (None: keep it in the record)."""
        return {}

    def counted(self, detections: Detections) -> int:
        """What the job's ``detections`` counter adds for one image."""
        return len(detections)
