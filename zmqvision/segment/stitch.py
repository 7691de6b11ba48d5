"""Stitching per-tile score maps into one label map, strip by strip, in bounded memory.

Each tile is a box of the image, cut and letterboxed to the model input by
``tiling.cut_tile`` (resized crop at the top-left, zeros after it). Its score map comes
back at model resolution; only the top-left ``valid`` part (the resized crop) means
anything. The stitcher resizes that part back to the box (bilinear, half-pixel centres),
weights it by a *feather* — 1 inside the tile, a linear ramp across the overlap width
towards every edge that is not an image border — and adds it into the image. Where tiles
overlap, the blend moves smoothly from one tile's scores to the other's, so there is no
hard seam; the argmax of the blend (or, for a one-channel probability model, blend > 0.5)
is the label.

Memory: the image is cut into row strips. A tile is held as it arrived (model resolution,
no copy) until every strip it touches is done; a strip is computed — and handed out as u8
labels — as soon as every tile touching it has arrived and the strips above it are out.
Once strips are out, a held tile whose resize no longer reads at least an eighth of its
source rows keeps only the band it still reads (a copy; the larger array is let go): a
row of tiles is held whole only until the row below it is in, then only its overlap
with that row. Tiles may arrive in any order; what is held is the arrived tiles whose
last strip is not out yet (whole or their band), plus one strip's float buffer (sized
from ``STRIP_BYTES``). A whole-image tile (the coarse pass) is held at model resolution
too, never resized to the image. So memory does not grow with the image height, and no
float array of the whole image ever exists (docs/segmentation.md has the figures for
20000-pixel-wide images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zmqvision.tiling import Tile

STRIP_BYTES = 32 << 20  # float work buffer of one strip (rows × width × channels × 4)
MIN_STRIP_ROWS, MAX_STRIP_ROWS = 8, 512
TRIM_STEP = 8  # a held score map is cut down when at least 1/8 of its rows are done with
_ONE = np.ones(1, np.float32)


def valid_size(box: tuple[int, int, int, int], input_size: tuple[int, int]) -> tuple[int, int]:
    """``(nw, nh)``: the part of the model input that ``tiling.letterbox`` fills with the
    tile's pixels (same arithmetic; tests check it against letterbox itself)."""
    in_w, in_h = input_size
    tw, th = box[2] - box[0], box[3] - box[1]
    s = min(in_w / tw, in_h / th)
    return min(in_w, max(1, round(tw * s))), min(in_h, max(1, round(th * s)))


def feather(start: int, stop: int, length: int, ramp: int) -> np.ndarray:
    """Weights of pixels ``start..stop-1`` of a tile on an axis of ``length`` pixels.

    A linear ramp ``(d + 0.5) / ramp`` by distance ``d`` to a tile edge, capped at 1;
    edges on the image border get no ramp (nothing else covers those pixels). Never 0,
    so every pixel has a positive total weight.
    """
    i = np.arange(start, stop, dtype=np.float32)
    d = np.full(stop - start, np.inf, np.float32)
    if start > 0:
        d = np.minimum(d, i - start)
    if stop < length:
        d = np.minimum(d, stop - 1 - i)
    return np.minimum(1.0, (d + 0.5) / max(1, ramp)).astype(np.float32)


def _axis_coeffs(start: int, stop: int, tile_start: int, tile_len: int, n_valid: int,
                 weight: np.ndarray):
    """Bilinear sampling (half-pixel centres) of image pixels ``start..stop-1`` from a
    tile's ``n_valid`` model pixels spread over ``tile_len`` image pixels, with the
    feather folded into the two coefficients. ``None`` when the map is the identity."""
    if n_valid == tile_len:
        return None
    pos = (np.arange(start, stop, dtype=np.float64) - tile_start + 0.5) * (n_valid / tile_len)
    pos = np.clip(pos - 0.5, 0.0, n_valid - 1)
    i0 = pos.astype(np.intp)
    i1 = np.minimum(i0 + 1, n_valid - 1)
    f = (pos - i0).astype(np.float32)
    return i0, i1, (1.0 - f) * weight, f * weight


class _Held:
    """A tile's score map as held: source rows ``row0 ..`` of its valid part, which has
    ``nh`` rows in all (the resize is computed for the whole valid part; only the rows
    it still reads are kept)."""

    __slots__ = ("nh", "row0", "scores")

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores
        self.nh = scores.shape[0]
        self.row0 = 0


@dataclass(frozen=True)
class Strip:
    """Finished rows ``y0 .. y0 + len(labels)`` of the label map (u8 ``[rows, width]``);
    ``scores`` (the blended float scores, ``[rows, width, channels]``) only when the
    stitcher was asked to keep them (equality tests)."""

    y0: int
    labels: np.ndarray
    scores: np.ndarray | None = None


class Stitcher:
    """Blends the tiles of one image into finished label strips (see module docstring).

    ``tiles`` is the image's whole plan (``tiling.plan_scales``): the stitcher must know
    which tiles touch a strip before it can declare the strip done. ``channels`` is the
    model's output depth: > 1 class logits, 1 a foreground probability (labels 0/1 by
    ``threshold``). ``overlap`` is the plan's overlap fraction; a tile's feather ramp is
    that fraction of its own box, as ``tiling.tile_starts`` spaced the grid.
    """

    def __init__(
        self,
        width: int,
        height: int,
        tiles: Sequence[Tile],
        input_size: tuple[int, int],
        channels: int,
        *,
        overlap: float,
        threshold: float = 0.5,
        strip_rows: int | None = None,
        keep_scores: bool = False,
    ) -> None:
        if channels < 1 or channels > 256:
            raise ValueError(f"channels must be in 1..256 (u8 labels), got {channels}")
        self.width, self.height = int(width), int(height)
        self.input_size = input_size
        self.channels = channels
        self.overlap = overlap
        self.threshold = float(threshold)
        self.keep_scores = keep_scores
        self.classes = 2 if channels == 1 else channels
        self.tiles = {t.index: t for t in tiles}
        if not self.tiles:
            raise ValueError("an image needs at least one tile")
        if strip_rows is None:
            # Within the float budget, and a quarter of the shortest tile at most: a strip
            # taller than the tiles' step would need a third row of tiles before the first
            # row can be let go (measured: 240 MB instead of 180 at 20000 px wide).
            strip_rows = min(STRIP_BYTES // max(1, self.width * channels * 4),
                             min(t.height for t in tiles) // 4)
        self.strip_rows = int(min(MAX_STRIP_ROWS, max(MIN_STRIP_ROWS, strip_rows)))
        n = -(-self.height // self.strip_rows)
        self._touching: list[list[int]] = [[] for _ in range(n)]
        for t in tiles:
            x0, y0, x1, y1 = t.box
            if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
                raise ValueError(f"tile {t.index} box {t.box} outside {width}x{height}")
            for k in range(y0 // self.strip_rows, (y1 - 1) // self.strip_rows + 1):
                self._touching[k].append(t.index)
        covered = np.zeros(self.height, bool)
        for t in tiles:
            covered[t.box[1]:t.box[3]] = True
        if not covered.all():
            raise ValueError("the tiles leave rows of the image uncovered")
        self._missing = [len(ts) for ts in self._touching]
        self._held: dict[int, np.ndarray] = {}
        self._next = 0  # first strip not handed out yet
        self.counts = np.zeros(self.classes, np.int64)
        self.held_bytes = 0  # score maps held now (as held: whole, or the band left)
        self.peak_held_bytes = 0  # most score-map bytes held at once
        self.peak_bytes = 0  # most bytes held at once: score maps + one strip's float buffers

    @property
    def strips(self) -> int:
        return len(self._touching)

    @property
    def done(self) -> bool:
        return self._next == len(self._touching)

    def add(self, index: int, scores: np.ndarray) -> list[Strip]:
        """Take one tile's score map; return the strips it finished (top to bottom).

        ``scores``: ``[in_h, in_w, C]`` (the whole model output, a leading batch axis of
        1 allowed) or just its valid ``[nh, nw, C]`` part. It is held as given, not
        copied: the caller must not reuse the buffer. A tile seen before is ignored (a
        re-sent tile is merged once).
        """
        tile = self.tiles.get(index)
        if tile is None:
            raise KeyError(f"tile {index} is not in this image's plan")
        if index in self._held or self._arrived(tile):
            return []
        held = _Held(self._valid_part(tile, scores))
        self._held[index] = held
        self.held_bytes += held.scores.nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        for k in self._strip_range(tile):
            self._missing[k] -= 1
        out = []
        while self._next < len(self._touching) and self._missing[self._next] == 0:
            out.append(self._emit(self._next))
            self._next += 1
            self._release()
        if out:
            self._trim()
        return out

    @property
    def coverage(self) -> np.ndarray:
        """Fraction of the image's pixels per class (of the strips handed out so far)."""
        return self.counts / float(self.width * self.height)

    # ------------------------------------------------------------------ internals

    def _arrived(self, tile: Tile) -> bool:
        """Already merged and released (all its strips are out)."""
        return (tile.box[3] - 1) // self.strip_rows < self._next

    def _strip_range(self, tile: Tile) -> range:
        return range(tile.box[1] // self.strip_rows, (tile.box[3] - 1) // self.strip_rows + 1)

    def _valid_part(self, tile: Tile, scores: np.ndarray) -> np.ndarray:
        a = np.asarray(scores)
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        nw, nh = valid_size(tile.box, self.input_size)
        in_w, in_h = self.input_size
        if a.ndim != 3 or a.shape[2] != self.channels or a.shape[:2] not in ((in_h, in_w),
                                                                              (nh, nw)):
            raise ValueError(
                f"tile {tile.index}: scores {list(a.shape)} are neither [{in_h}, {in_w}, "
                f"{self.channels}] nor the valid part [{nh}, {nw}, {self.channels}]"
            )
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"tile {tile.index}: scores must be floating point, got {a.dtype}")
        return a[:nh, :nw]

    def _release(self) -> None:
        for index in [i for i in self._held if self._arrived(self.tiles[i])]:
            self.held_bytes -= self._held.pop(index).scores.nbytes

    def _trim(self) -> None:
        """Keep of each held tile only the source rows that the strips not out yet need.

        The strips above ``_next`` are out; what a tile still has to give starts at image
        row ``_next * strip_rows``, which its resize samples from source row ``first``
        on. When that drops at least ``1 / TRIM_STEP`` of the rows held, the band left is
        copied and the larger array let go (a row of tiles is held whole only until the
        row below it is in; then just its overlap with that row stays).
        """
        y = self._next * self.strip_rows
        for index, held in self._held.items():
            x0, y0, x1, y1 = self.tiles[index].box
            if y <= y0:
                continue
            nh = held.nh
            if nh == y1 - y0:
                first = y - y0
            else:
                first = int(_axis_coeffs(y, y + 1, y0, y1 - y0, nh, _ONE)[0][0])
            rows = held.scores.shape[0]
            drop = first - held.row0
            if drop * TRIM_STEP < rows:
                continue
            band = held.scores[drop:].copy()
            self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes + band.nbytes)
            self.peak_bytes = max(self.peak_bytes, self.held_bytes + band.nbytes)
            self.held_bytes += band.nbytes - held.scores.nbytes
            held.scores, held.row0 = band, first

    def _emit(self, k: int) -> Strip:
        s0 = k * self.strip_rows
        s1 = min(self.height, s0 + self.strip_rows)
        acc = np.zeros((s1 - s0, self.width, self.channels), np.float32)
        wsum = np.zeros((s1 - s0, self.width), np.float32)
        self.peak_bytes = max(self.peak_bytes, self.held_bytes + acc.nbytes + wsum.nbytes)
        for index in self._touching[k]:
            self._blend(self.tiles[index], self._held[index], s0, s1, acc, wsum)
        if self.channels == 1:
            blended = acc[..., 0] / wsum
            labels = (blended > self.threshold).astype(np.uint8)
            scores = blended[..., None] if self.keep_scores else None
        else:
            labels = acc.argmax(axis=2).astype(np.uint8)  # wsum > 0 does not change it
            scores = acc / wsum[..., None] if self.keep_scores else None
        self.counts += np.bincount(labels.ravel(), minlength=self.classes)[: self.classes]
        return Strip(s0, labels, scores)

    def _blend(self, tile: Tile, held: _Held, s0: int, s1: int,
               acc: np.ndarray, wsum: np.ndarray) -> None:
        """Add the tile's feathered, resized scores for image rows ``s0..s1-1``."""
        x0, y0, x1, y1 = tile.box
        r0, r1 = max(s0, y0), min(s1, y1)
        scores, nh, row0 = held.scores, held.nh, held.row0
        nw = scores.shape[1]
        tw, th = x1 - x0, y1 - y0
        # The ramp is the tile's, over its whole height: only this strip's slice of it
        # is used (a ramp from the strip's own edges would make the blend depend on the
        # strip height, a memory setting).
        wy = feather(y0, y1, self.height, round(th * self.overlap))[r0 - y0:r1 - y0]
        wx = feather(x0, x1, self.width, round(tw * self.overlap))
        ys = _axis_coeffs(r0, r1, y0, th, nh, wy)
        if ys is None:
            rows = scores[r0 - y0 - row0:r1 - y0 - row0] * wy[:, None, None]
        else:
            i0, i1, c0, c1 = ys
            rows = scores[i0 - row0] * c0[:, None, None]
            rows += scores[i1 - row0] * c1[:, None, None]
        xs = _axis_coeffs(x0, x1, x0, tw, nw, wx)
        target = acc[r0 - s0:r1 - s0, x0:x1]
        if xs is None:
            target += rows * wx[None, :, None]
        else:
            j0, j1, c0, c1 = xs
            target += rows[:, j0] * c0[None, :, None]
            target += rows[:, j1] * c1[None, :, None]
        wsum[r0 - s0:r1 - s0, x0:x1] += wy[:, None] * wx[None, :]
