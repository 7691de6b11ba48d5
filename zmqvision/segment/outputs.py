"""What becomes of an image's finished strips: the PNG, the per-class figures, the RLE.

``MaskOutputs`` is the consumer the sink (and ``segment_image``) feeds each ``Strip`` to,
in order. It writes the palette PNG as it goes, spills the labels for COCO RLE only when
asked (RLE needs whole columns), and at the end gives the record's ``segmentation``
field. Nothing in it holds more than one strip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zmqvision.segment.png import PalettePNGWriter
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
        total = float(self.width * self.height)
        classes = []
        for k in np.flatnonzero(counts).tolist():
            entry = {"class_id": k, "label": self.labels[k] if k < len(self.labels) else
                     f"class_{k}", "pixels": int(counts[k]),
                     "coverage": round(int(counts[k]) / total, 6)}
            if k in rles:
                entry["rle"] = rles[k]
            classes.append(entry)
        return {"size": [self.width, self.height], "mask": mask, "classes": classes}

    def abort(self) -> None:
        if self._png is not None:
            self._png.abort()
        if self._spill is not None:
            self._spill.close()
