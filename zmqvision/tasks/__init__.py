"""Tasks: what a model's answer for an image is, from the cut to the record.

zmqvision moves tiles and results; the task says what they mean. One module per task,
each a ``Task`` with the same five answers:

- **tiles**: how an image becomes tiles (``scales``, ``cut``, ``reducer``). Detection
  cuts an overlapping grid at the planned scales and letterboxes each cut; classification
  resizes the whole image to the model input (one tile), or with ``--tile N`` a grid of
  cuts, each classified on its own.
- **what a tile asks for** (``tile_request``): what the worker returns beyond its
  default (``protocol.Tile.task``: classification's ``top_k`` and ``embed``); detection
  asks nothing (its tiles are byte for byte what they always were).
- **worker**: raw outputs → the wire payload (``decode``). Every task's payload is rows of
  ``Detections`` (box, score, class id) in image pixels, plus for classification an
  optional embedding frame: a class of a classified tile is a row whose box is the tile's
  region. So the wire, the result cache's entries, the sink's bookkeeping and its byte
  budgets carry every task the same way, already validated.
- **sink**: tile payloads → the image's record fields (``merge`` and ``record_fields``):
  detection fuses boxes (``zmqvision.merge``); classification keeps each tile's classes.
- **COCO**: ``results.write_coco`` writes a record's ``detections`` as boxes and its
  ``labels`` as image-level annotations (docs/protocol.md).

A job's task settings travel in ``JobStart.options["task"]`` (absent for detection, so a
detection job's messages are unchanged) and are part of its result-cache key.
Segmentation (``tasks.segmentation``) sends each tile's score map as its own frame
(``Result.scores``) and merges on the sink as tiles arrive (``Task.image_merge``: a
stitcher per image writing its mask in strips). Two-stage recognition is a further
``Task``: a second model fed the crops of the first's rows.
"""

from __future__ import annotations

from zmqvision.tasks.base import Decoded, ImageMerge, MaskSettings, Task, TaskSettings
from zmqvision.tasks.classification import Classification
from zmqvision.tasks.detection import Detection
from zmqvision.tasks.segmentation import Segmentation

TASKS: dict[str, Task] = {"detection": Detection(), "classification": Classification(),
                          "segmentation": Segmentation()}
# The reading detectors (plates-det, ppocr-v4-det) are detectors to every part of the
# pipeline: boxes cut, decoded (their families in models.runtime), merged as any; their
# catalog tasks name what the 4 points of each box mean (zmqvision.tasks.stage2).
TASKS["plate-detection"] = TASKS["text-detection"] = TASKS["detection"]


def get(name: str | None) -> Task:
    """The task of this name (None: detection); ValueError for an unknown one."""
    task = TASKS.get(name or "detection")
    if task is None:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return task


def of_options(options: dict) -> tuple[Task, TaskSettings]:
    """A job's task and its settings, from ``JobStart.options`` (``"task"`` absent:
    detection). ValueError for settings that are not a task's."""
    raw = options.get("task")
    if raw is None:
        return TASKS["detection"], TaskSettings()
    settings = TaskSettings.from_json(raw)
    return get(settings.name), settings


__all__ = ["TASKS", "Decoded", "ImageMerge", "MaskSettings", "Task", "TaskSettings", "get",
           "of_options"]
