"""What becomes of an image's finished strips: the PNG, the per-class figures, the RLE.

``MaskOutputs`` is the consumer the sink (and ``segment_image``) feeds each ``Strip`` to,
in order. It writes the palette PNG as it goes, spills the labels for COCO RLE only when
asked (RLE needs whole columns), and at the end gives the record's ``segmentation``
field. Nothing in it holds more than one strip.

``from_cached`` gives the same field for an image answered from the result cache: the
mask's bytes as they were written (``png.write_bytes``: temporary name, rename), the
classes from the stored counts, the RLE from the PNG's own rows; ``segmentation_value``
builds the field for both, so a hit's record is the computed one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zmqvision.segment.png import PalettePNGWriter, read_rows, write_bytes
from zmqvision.segment.rle import LabelSpill
from zmqvision.segment.stitch import Strip


class MaskOutputs:
    """Writes one image's label strips to ``png`` (if given) and, with ``rle``, to a
    spill file for COCO RLE (in ``spill_dir``). ``finish(counts)`` closes both and
    returns the record's ``segmentation`` value; ``abort()`` removes partial files."""

    def __init__(self, width: int, height: int, labels: Sequence[str], *,
                 png: str | Path | None = None, rle: bool = False,
                 spill_dir: str | Path | None = None) -> None:
        self.width, self.height = int(width), int(height)
        self.labels = tuple(labels)
        self.png_path = Path(png) if png is not None else None
        self._png = PalettePNGWriter(png, width, height) if png is not None else None
        self._spill = LabelSpill(width, height, spill_dir) if rle else None
        self.rows = 0

    def feed(self, strip: Strip) -> None:
        if strip.y0 != self.rows:
            raise ValueError(f"strip at row {strip.y0} out of order (expected {self.rows})")
        if self._png is not None:
            self._png.write(strip.labels)
        if self._spill is not None:
            self._spill.write(strip.y0, strip.labels)
        self.rows += len(strip.labels)

    def finish(self, counts: np.ndarray) -> dict:
        """``{"size": [w, h], "mask": path | None, "classes": [...]}``; each present
        class as ``{"class_id", "label", "pixels", "coverage"}`` (+ ``"rle"`` with RLE)."""
        if self.rows != self.height:
            self.abort()
            raise ValueError(f"mask finished with {self.rows} of {self.height} rows")
        mask = str(self._png.close()) if self._png is not None else None
        rles = {}
        if self._spill is not None:
            rles = self._spill.rle()
            self._spill.close()
        return segmentation_value(self.width, self.height, self.labels, counts, mask, rles)

    def abort(self) -> None:
        if self._png is not None:
            self._png.abort()
        if self._spill is not None:
            self._spill.close()


def segmentation_value(width: int, height: int, labels: Sequence[str], counts: np.ndarray,
                       mask: str | None, rles: dict[int, dict]) -> dict:
    """The record's ``segmentation`` value: size, mask path, each class present with its
    pixels and coverage (and RLE when ``rles`` has it)."""
    total = float(width * height)
    classes = []
    for k in np.flatnonzero(counts).tolist():
        entry = {"class_id": k, "label": labels[k] if k < len(labels) else f"class_{k}",
                 "pixels": int(counts[k]), "coverage": round(int(counts[k]) / total, 6)}
        if k in rles:
            entry["rle"] = rles[k]
        classes.append(entry)
    return {"size": [width, height], "mask": mask, "classes": classes}


def from_cached(png_bytes: bytes | memoryview, counts: Sequence[int], width: int, height: int,
                labels: Sequence[str], *, png: str | Path | None = None, rle: bool = False,
                spill_dir: str | Path | None = None) -> dict:
    """The record's ``segmentation`` value for a mask from the result cache, as
    ``MaskOutputs.finish`` gives it for a computed one: ``png_bytes`` written to ``png``
    (if given) as they are, ``counts`` the pixels of each class id, and with ``rle`` each
    class's COCO RLE from the PNG's rows (read before anything is written: a PNG that is
    not a whole mask of this size, or whose rows do not count ``counts``, is a
    ValueError and leaves no file). OSError: the file could not be written."""
    counts_array = np.asarray(counts, np.int64)
    rles: dict[int, dict] = {}
    if rle:
        rles = rle_of_png(png_bytes, width, height, counts_array, spill_dir)
    mask = str(write_bytes(png, png_bytes)) if png is not None else None
    return segmentation_value(width, height, labels, counts_array, mask, rles)


def rle_of_png(png_bytes: bytes | memoryview, width: int, height: int, counts: np.ndarray,
               spill_dir: str | Path | None = None) -> dict[int, dict]:
    """Every present class's COCO RLE from a mask PNG's rows (spilled as the computed
    path spills the stitcher's strips, so the strings are the same); ValueError when
    the rows' class counts are not ``counts``."""
    seen = np.zeros(256, np.int64)
    with LabelSpill(width, height, spill_dir) as spill:
        y = 0
        for rows in read_rows(png_bytes, width, height,
                              rows=max(1, (4 << 20) // (width + 1))):
            spill.write(y, rows)
            seen += np.bincount(rows.ravel(), minlength=256)
            y += len(rows)
        want = np.zeros(256, np.int64)
        want[:len(counts)] = counts[:256]
        if len(counts) > 256 or not np.array_equal(seen, want):
            raise ValueError("the cached mask's pixels are not its class counts")
        return spill.rle()
