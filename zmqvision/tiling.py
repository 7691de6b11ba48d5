"""Cutting a large image into overlapping, model-sized tiles, and mapping boxes back.

Pure integer arithmetic on one axis at a time (as SAHI's ``get_slice_bboxes`` does), but
with typed results: a plan is a list of frozen ``Tile``s the ventilator sends as-is.
Edge tiles are shifted inward so every tile has full size: a sliver tile at the border
would be upscaled by the letterbox and detect different objects than its neighbours.
The overlap exists so that an object cut by one tile border is whole in a neighbour;
``zmqvision.merge`` then fuses the partial and whole copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Tile:
    """One crop of an image: pixel box ``x0, y0, x1, y1`` (x1/y1 exclusive).

    ``full`` marks the optional extra pass over the whole image, downscaled, which finds
    objects larger than a tile.
    """

    index: int
    box: tuple[int, int, int, int]
    full: bool = False

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles along one axis of ``length`` pixels.

    Step is ``tile - round(tile * overlap)`` (at least 1), so neighbours share at least
    ``round(tile * overlap)`` pixels; the last tile is flush with the border and keeps
    full size (its overlap with the previous one grows instead of leaving a sliver).
    An axis no longer than a tile gets one tile over its whole length.
    """
    if tile < 1:
        raise ValueError(f"tile size must be >= 1, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length < 1:
        raise ValueError(f"image length must be >= 1, got {length}")
    if length <= tile:
        return [0]
    step = max(1, tile - round(tile * overlap))
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def plan_tiles(
    width: int,
    height: int,
    tile_size: tuple[int, int],
    overlap: float = 0.2,
    full_pass: bool = False,
) -> list[Tile]:
    """Row-major grid of tiles covering a ``width`` x ``height`` image.

    ``tile_size`` is ``(tile_w, tile_h)``. With ``full_pass`` one extra ``Tile`` over the
    whole image is appended, unless the grid is already that single tile (it would only
    detect everything twice).
    """
    return plan_scales(width, height, [tile_size, None] if full_pass else [tile_size],
                       overlap)


def plan_scales(
    width: int,
    height: int,
    scales: Sequence[tuple[int, int] | None],
    overlap: float = 0.2,
) -> list[Tile]:
    """One grid per cut size in ``scales``, in that order; ``None`` is the whole image.

    Several scales let one job see large objects whole (big cuts, or the whole image
    shrunk) and tiny ones enlarged (small cuts), with one merge over all of them. A tile
    whose box an earlier scale already produced is left out: the same pixels at the same
    enlargement would only detect the same objects twice (an image smaller than every
    cut is one tile, however many scales are asked for).
    """
    tiles: list[Tile] = []
    seen: set[tuple[int, int, int, int]] = set()
    for size in scales:
        if size is None:
            boxes = [(0, 0, width, height)]
        else:
            tw, th = size
            xs = tile_starts(width, tw, overlap)
            ys = tile_starts(height, th, overlap)
            boxes = [(x, y, min(x + tw, width), min(y + th, height)) for y in ys for x in xs]
        for box in boxes:
            if box not in seen:
                seen.add(box)
                tiles.append(Tile(index=len(tiles), box=box, full=size is None))
    return tiles


def letterbox(
    crop: np.ndarray, input_size: tuple[int, int], source_size: tuple[int, int] | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> tuple[np.ndarray, float]:
    """Fit ``crop`` (uint8 ``[h, w, 3]``) into the model input ``(in_w, in_h)``.

    Aspect ratio is kept (scale ``s = min(in_w / w, in_h / h)``, input px per image px);
    the resized crop sits at the top-left and the rest is zero, so mapping back is just
    ``/ s`` with no offset. The result is C-contiguous because it goes on the wire as one
    raw frame. A crop already of input size is not resized, and copied only if it is a
    non-contiguous view.

    ``source_size`` and ``box``: when ``crop`` holds the tile at a reduced resolution (a
    JPEG decoded at 1/2, 1/4 or 1/8, see ``draft_factor``), the tile's ``(w, h)`` in image
    pixels and its exact, fractional region within ``crop``. The scale and the resized
    size are those of the full-resolution tile, so boxes map back as they would without
    the reduction.
    """
    in_w, in_h = input_size
    h, w = crop.shape[:2]
    sw, sh = source_size if source_size is not None else (w, h)
    if box is None and (sw, sh) == (in_w, in_h) == (w, h):
        return np.ascontiguousarray(crop), 1.0
    s = min(in_w / sw, in_h / sh)
    nw = min(in_w, max(1, round(sw * s)))
    nh = min(in_h, max(1, round(sh * s)))
    if box is None and (nw, nh) == (w, h):
        resized = crop
    else:
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
            (nw, nh), Image.BILINEAR, box=box))
    if (nw, nh) == (in_w, in_h):
        return np.ascontiguousarray(resized), s
    out = np.zeros((in_h, in_w, 3), np.uint8)
    out[:nh, :nw] = resized
    return out, s


def draft_factor(tiles: Sequence[Tile], input_size: tuple[int, int]) -> int:
    """How far an image may be reduced (1, 2, 4 or 8) before its tiles are cut.

    Every tile is resized to the model input anyway; when each one shrinks by at least
    ``f``, the image can be decoded at ``1/f`` of its size (JPEG decoders do this almost
    for free, from the DCT) without losing a pixel the model would see. The largest power
    of two that shrinks no tile below its input size is returned; 1 when some tile is
    enlarged or kept as is (then every pixel is needed).
    """
    in_w, in_h = input_size
    return _power_of_two_within(min(
        (max((t.box[2] - t.box[0]) / in_w, (t.box[3] - t.box[1]) / in_h) for t in tiles),
        default=1.0))


def _power_of_two_within(shrink: float) -> int:
    """The largest of 1, 2, 4, 8 that reduces by no more than ``shrink``."""
    f = 1
    while f < 8 and shrink >= 2 * f:
        f *= 2
    return f


def draft_reducer(
    scales: Sequence[tuple[int, int] | None], overlap: float, input_size: tuple[int, int]
) -> Callable[[int, int], int]:
    """``io.decode_image``'s ``reduce`` for a job: an image's size → the ``draft_factor``
    of the tiles ``plan_scales`` gives it. The ventilator and anything that must cut the
    same tiles from the same pixels use this one function."""
    return lambda width, height: draft_factor(plan_scales(width, height, scales, overlap),
                                              input_size)


def cut_tile(
    image: np.ndarray, tile: Tile, input_size: tuple[int, int], reduced: int = 1,
) -> tuple[np.ndarray, float]:
    """Crop ``tile`` out of ``image`` (a view, no copy) and letterbox it to the model input.

    ``reduced``: ``image`` holds the picture at 1/reduced of its size (each of its pixels
    covers ``reduced`` × ``reduced`` image pixels, as a JPEG decoded with DCT scaling);
    the tile's box, in image pixels, is then cut at its exact fractional place.
    """
    x0, y0, x1, y1 = tile.box
    if reduced == 1:
        return letterbox(image[y0:y1, x0:x1], input_size)
    h, w = image.shape[:2]
    f = float(reduced)
    bx0, by0 = min(x0 / f, w - 1), min(y0 / f, h - 1)
    bx1, by1 = min(x1 / f, w), min(y1 / f, h)
    ix0, iy0 = int(bx0), int(by0)
    ix1, iy1 = min(w, max(ix0 + 1, math.ceil(bx1))), min(h, max(iy0 + 1, math.ceil(by1)))
    return letterbox(image[iy0:iy1, ix0:ix1], input_size, (x1 - x0, y1 - y0),
                     (bx0 - ix0, by0 - iy0, bx1 - ix0, by1 - iy0))


def to_image_coords(
    boxes: np.ndarray, tile_box: tuple[int, int, int, int], scale: float
) -> np.ndarray:
    """Map ``[N, 4]`` boxes from model-input pixels of a tile to image pixels.

    Inverse of the letterbox: ``x0 + bx / scale``. Boxes are clipped to the tile so that a
    box reaching into the zero padding cannot claim pixels the tile never saw. Returns a
    new float64 array (float64 keeps sub-pixel precision on very large images).
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    x0, y0, x1, y1 = tile_box
    out = np.asarray(boxes, np.float64).reshape(-1, 4) / scale
    out += (x0, y0, x0, y0)
    np.clip(out[:, 0::2], x0, x1, out=out[:, 0::2])
    np.clip(out[:, 1::2], y0, y1, out=out[:, 1::2])
    return out


def points_to_image_coords(
    points: np.ndarray, tile_box: tuple[int, int, int, int], scale: float
) -> np.ndarray:
    """Map ``[N, K, 2]`` points (landmarks) from model-input pixels of a tile to image
    pixels, as ``to_image_coords`` maps boxes.

    Not clipped to the tile: a landmark is an estimate of where a face's eye or mouth
    corner is, and a face cut by the tile border has its points beyond it; alignment
    reads them from the original image, where those pixels exist.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    out = np.asarray(points, np.float64) / scale
    out += (tile_box[0], tile_box[1])
    return out


def stretch(
    crop: np.ndarray, input_size: tuple[int, int], box: tuple[float, float, float, float] | None
    = None,
) -> np.ndarray:
    """Resize ``crop`` (uint8 ``[h, w, 3]``) to exactly the model input ``(in_w, in_h)``,
    aspect ratio not kept: how a classifier sees a whole image or a cut (the way such
    models are trained and evaluated), where a letterbox would give it black bars to
    classify. ``box``: the exact, fractional region of ``crop`` to resize (a tile cut from
    a reduced JPEG, see ``cut_stretched``). C-contiguous, as it goes on the wire."""
    in_w, in_h = input_size
    h, w = crop.shape[:2]
    if box is None and (w, h) == (in_w, in_h):
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
        (in_w, in_h), Image.BILINEAR, box=box))


def cut_stretched(
    image: np.ndarray, tile: Tile, input_size: tuple[int, int], reduced: int = 1,
) -> tuple[np.ndarray, float]:
    """``tile`` cut from ``image`` and stretched to the model input (``stretch``); with
    ``reduced`` as in ``cut_tile``. The scale returned is the horizontal one (input px per
    image px): nothing maps coordinates back from a stretched tile, the wire wants one."""
    x0, y0, x1, y1 = tile.box
    scale = input_size[0] / max(1, x1 - x0)
    if reduced == 1:
        return stretch(image[y0:y1, x0:x1], input_size), scale
    h, w = image.shape[:2]
    f = float(reduced)
    bx0, by0 = min(x0 / f, w - 1), min(y0 / f, h - 1)
    bx1, by1 = min(x1 / f, w), min(y1 / f, h)
    ix0, iy0 = int(bx0), int(by0)
    ix1, iy1 = min(w, max(ix0 + 1, math.ceil(bx1))), min(h, max(iy0 + 1, math.ceil(by1)))
    return stretch(image[iy0:iy1, ix0:ix1], input_size,
                   (bx0 - ix0, by0 - iy0, bx1 - ix0, by1 - iy0)), scale


def stretch_draft_factor(tiles: Sequence[Tile], input_size: tuple[int, int]) -> int:
    """``draft_factor`` for stretched tiles: each axis is resized on its own, so the image
    may be reduced only by what the *least* shrunk axis of every tile allows."""
    in_w, in_h = input_size
    return _power_of_two_within(min(
        (min((t.box[2] - t.box[0]) / in_w, (t.box[3] - t.box[1]) / in_h) for t in tiles),
        default=1.0))
