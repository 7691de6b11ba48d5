"""Segmentation: a label per pixel, for images of any size (``zmqvision.segment``).

- **tiles**: ``segment.plan_segmentation``: an image within twice the model input is one
  tile (the whole image letterboxed to the input: context matters more than pixels);
  a larger one a grid of input-sized cuts at one image pixel per model pixel, ``--tile``
  another cut size, ``--overlap`` between neighbours. Cuts are letterboxed as
  detection's (``tiling.cut_tile``). JPEGs are always decoded at full size: a grid tile
  shrinks nothing, and the pipeline's masks must equal ``segment_image``'s.
- **tile request**: none; a segmentation worker always answers with its score map.
- **worker**: the valid part of the tile's score map (``segment.valid_size``: what the
  letterbox filled), float32 ``[h, w, C]``, as the result's ``scores`` frame; no rows.
- **sink**: a ``SegmentImage`` per image, made when its first tile arrives: a
  ``Stitcher`` fed as tiles come (in any order), its finished strips going straight to
  ``MaskOutputs`` (the ``--masks`` palette PNG, the input's size; COCO RLE with
  ``--format coco``). What it holds is bounded by the stitcher (docs/segmentation.md),
  not by the image. The record gets ``"segmentation"``: size, mask path, per-class
  pixels and coverage (and RLE).
- **cache**: an entry keeps the mask file's bytes exactly as written and each class's
  pixels (``protocol.SegmentCached``; ``cache_data`` on the sink, after the record). A
  hit writes the bytes as the image's mask (temporary name, rename: ``from_cache``) and
  makes the record's field from the counts, with COCO RLE from the PNG's rows when the
  sink writes COCO, so the record is the computed one's. A sink that writes no mask
  (no ``--masks``, a publish-only job) or a mask over ``protocol.MAX_CACHED_MASK_BYTES``
  saves nothing. The key holds ``MASK_VERSION`` besides model, tiling and threshold.
"""

from __future__ import annotations

import os
from pathlib import Path

from zmqvision import protocol
from zmqvision.boxes import Detections
from zmqvision.segment.reference import plan_segmentation
from zmqvision.segment.stitch import Stitcher, valid_size
from zmqvision.tasks.base import Decoded, ImageMerge, MaskSettings, Task, TaskSettings
from zmqvision.tiling import cut_tile

# What a mask is, in the result cache's key (cache.key.segment_part): raise it whenever
# the stitcher, the palette or the PNG writer would make other bytes of the same tiles,
# so that entries made before are never served as masks made now.
MASK_VERSION = 1


class Segmentation(Task):
    name = "segmentation"

    def settings(self, top_k: int, embed: bool, grid: bool) -> TaskSettings:
        if embed:
            raise ValueError("--embed is for classification models")
        return TaskSettings(name=self.name, grid=grid)

    def scales(self, spec, *, tile_size, scales, min_size, full_pass):
        if scales or min_size is not None or full_pass:
            raise ValueError("--scales, --min-size and --full-pass are for detection; a "
                             "segmenter's image is one tile, or a grid of --tile cuts")
        return (tuple(tile_size),) if tile_size is not None else (None,)

    def cut(self, pixels, tile, input_size, reduced):
        return cut_tile(pixels, tile, input_size, reduced)

    def reducer(self, scales, overlap, input_size):
        return lambda width, height: 1  # see the module docstring: never a reduced decode

    def plan(self, width, height, scales, overlap, input_size):
        cut = scales[0] if scales else None
        return plan_segmentation(width, height, input_size, cut, overlap)

    def cacheable(self, settings: TaskSettings) -> bool:
        return True  # the entry keeps the mask file (cache_data), the record is remade

    def decode(self, network, request, tile, score_threshold):
        return Decoded(Detections.empty(), scores=network.valid_scores(request, tile.box))

    def check_part(self, settings, n_labels, detections, embedding):
        if len(detections):
            return "a segmentation result has rows"
        if embedding is not None:
            return "a segmentation result has an embedding"
        return None

    def merge(self, parts, merge_config):
        return Detections.empty()

    def image_merge(self, settings, start, info, outputs):
        return SegmentImage(start, info, outputs)

    def record_fields(self, settings, detections, embeddings, labels, score_threshold=None):
        return {"segmentation": None}  # a finished image's come from its SegmentImage

    def counted(self, detections):
        return 0


def mask_name(path: str, image: str, frame: int | None) -> str:
    """The mask file of an image: its file's stem, the frame for a multi-frame file, and
    the image id's first 8 hex digits (two files of one name in different folders)."""
    part = f"-frame{frame}" if frame is not None else ""
    return f"{Path(path).stem}{part}-{image[:8]}.png"


def mask_path(outputs: MaskSettings, info) -> str | None:
    """Where the image's mask goes (its directory made), or None: no ``--masks``, or a
    job whose records are not written."""
    if outputs.masks is None or not outputs.write:
        return None
    os.makedirs(outputs.masks, exist_ok=True)
    return os.path.join(outputs.masks, mask_name(info.path, info.image, info.frame))


def from_cache(start, info, outputs: MaskSettings) -> dict:
    """The record's fields for an image the ventilator answered from the result cache
    (``info.cached.segment``), as ``SegmentImage.finish`` gives a computed one's: the
    cached PNG written where this sink puts the image's mask, COCO RLE from its rows
    with ``--format coco``. ValueError: no mask came, or it is not one of this image;
    OSError: it could not be written."""
    from zmqvision.segment.outputs import from_cached

    cached = info.cached
    if cached is None or cached.segment is None:
        raise ValueError("a cached segmentation image without its mask")
    mask = cached.segment
    return {"segmentation": from_cached(mask.png, mask.counts, info.width, info.height,
                                        list(start.model["labels"]),
                                        png=mask_path(outputs, info),
                                        rle=outputs.rle and outputs.write)}


def counts_of(value: dict) -> tuple[int, ...]:
    """The pixels of each class id (0 up to the last present) from a record's
    ``segmentation`` value, which lists the classes present."""
    pixels = {c["class_id"]: c["pixels"] for c in value["classes"]}
    return tuple(pixels.get(k, 0) for k in range(max(pixels, default=-1) + 1))


def cache_data(value: dict, width: int, height: int) -> protocol.SegmentCached | None:
    """What the result cache keeps of a computed image whose record has this
    ``segmentation`` value: its mask file's bytes, read back as written, and its counts.
    None when no file was written (no ``--masks``); ValueError for a file over
    ``protocol.MAX_CACHED_MASK_BYTES`` or that is no longer this image's mask; OSError
    when it cannot be read."""
    path = value.get("mask")
    if path is None:
        return None
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > protocol.MAX_CACHED_MASK_BYTES:
            raise ValueError(f"mask {path} has {size} bytes, over the "
                             f"{protocol.MAX_CACHED_MASK_BYTES} the cache keeps")
        data = fh.read(protocol.MAX_CACHED_MASK_BYTES + 1)
    counts = counts_of(value)
    try:  # the same checks a hit's will pass (a file replaced meanwhile is not saved)
        return protocol.SegmentCached.parse({"png": len(data), "counts": list(counts)},
                                            [data], width, height)
    except protocol.ProtocolError as exc:
        raise ValueError(f"mask {path}: {exc}") from None


class SegmentImage(ImageMerge):
    """One image's stitching on the sink: tiles in (any order), strips out to the mask.

    Built from the job's ``JobStart`` (model input size, labels, tiling) and the image's
    ``ImageInfo``: the plan is computed again here, as the ventilator did, and must have
    the announced tile count (ValueError otherwise: the image fails). The stitcher is
    made with the first tile's channel count, which must be the model's: its class count,
    or 1 (a foreground probability) for a two-label model."""

    def __init__(self, start, info, outputs: MaskSettings) -> None:
        tiling, model = start.tiling, start.model
        try:
            self.input_size = (int(tiling["input_size"][0]), int(tiling["input_size"][1]))
            overlap = float(tiling["overlap"])
            scales = tiling.get("scales") or [None]
            cut = tuple(int(v) for v in scales[0]) if isinstance(scales[0], list) else None
            self.tiles = plan_segmentation(info.width, info.height, self.input_size, cut,
                                           overlap)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot plan the image's tiles from the job's tiling: {exc}"
                             ) from None
        if len(self.tiles) != info.tiles:
            raise ValueError(f"the image has {info.tiles} tiles, its plan {len(self.tiles)}")
        self.overlap = overlap
        self.labels = list(model["labels"])
        self.channels_allowed = {len(self.labels)} | ({1} if len(self.labels) == 2 else set())
        thr = start.options.get("score_threshold")
        self.threshold = float(thr if thr is not None else model.get("score_threshold") or 0.5)
        self.width, self.height = info.width, info.height
        self.png = mask_path(outputs, info)
        self.rle = outputs.rle and outputs.write
        self.stitcher: Stitcher | None = None
        self.outputs = None

    def add(self, index: int, result) -> str | None:
        from zmqvision.segment.outputs import MaskOutputs

        scores = result.scores
        if scores is None:
            return "a segmentation result without its score map"
        tile = self.tiles[index]
        nw, nh = valid_size(tile.box, self.input_size)
        if scores.shape[:2] != (nh, nw):
            return (f"scores {list(scores.shape)} for tile {index}, whose valid part is "
                    f"[{nh}, {nw}, C]")
        channels = scores.shape[2]
        if channels not in self.channels_allowed:
            return (f"{channels} score channels, the model has {len(self.labels)} classes")
        try:
            if self.stitcher is None:
                self.stitcher = Stitcher(self.width, self.height, self.tiles, self.input_size,
                                         channels, overlap=self.overlap,
                                         threshold=self.threshold)
                self.outputs = MaskOutputs(self.width, self.height, self.labels,
                                           png=self.png, rle=self.rle)
            elif channels != self.stitcher.channels:
                return f"{channels} score channels, the image's first tile had " \
                       f"{self.stitcher.channels}"
            for strip in self.stitcher.add(index, scores):
                self.outputs.feed(strip)
        except (ValueError, OSError) as exc:  # a full disk, a stitcher's refusal
            return f"stitching tile {index}: {exc}"
        return None

    @property
    def held_bytes(self) -> int:
        return self.stitcher.held_bytes if self.stitcher is not None else 0

    def finish(self) -> dict:
        if self.stitcher is None or not self.stitcher.done:
            raise ValueError("the image's mask is not complete")
        counts = self.stitcher.counts
        self.stitcher = None  # its held tiles go now, not with the record
        return {"segmentation": self.outputs.finish(counts)}

    def abort(self) -> None:
        if self.outputs is not None:
            self.outputs.abort()
        self.stitcher = self.outputs = None


__all__ = ["MASK_VERSION", "SegmentImage", "Segmentation", "cache_data", "counts_of",
           "from_cache", "mask_name", "mask_path"]
