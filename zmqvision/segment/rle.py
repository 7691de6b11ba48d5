"""COCO run-length encoding of each class's mask, in bounded memory.

COCO's RLE (pycocotools ``encode``) runs over the mask in *column-major* order,
alternating runs of 0 and 1 starting with 0; the ``counts`` string packs each run length
(after the third, minus the one two places back) into 5-bit groups, 6 bits a character
from ``'0'``. Label strips arrive row by row, so the map is spilled to a file
(``LabelSpill``, an ``np.memmap``) and read back in column blocks of at most
``BLOCK_BYTES``; one pass over the blocks finds the runs of every class at once (a run of
a class is a run of equal labels, so the label changes give all classes' runs).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BLOCK_BYTES = 16 << 20


def counts_string(counts: Iterable[int]) -> str:
    """pycocotools' compressed ``counts`` string of run lengths (maskApi.c rleToString)."""
    out: list[str] = []
    prev = [0, 0]  # counts[i - 2], counts[i - 1]
    for i, c in enumerate(counts):
        c = int(c)
        x = c - prev[0] if i > 2 else c
        prev = [prev[1], c]
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5  # arithmetic shift, as C's on a signed long
            more = x != -1 if ch & 0x10 else x != 0
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def mask_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a small boolean mask, column-major, starting with 0s (a plain
    reference, the whole mask in memory; tests compare ``LabelSpill`` with it)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


class LabelSpill:
    """The label map on disk (u8 ``[height, width]``), written strip by strip, then read
    in column blocks for RLE. The file lives in ``dir`` (a temporary directory by
    default) and is removed by ``close``."""

    def __init__(self, width: int, height: int, dir: str | Path | None = None) -> None:
        self.width, self.height = int(width), int(height)
        # Owned for the spill's life, closed (and so deleted) by close().
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="zmqvision-labels-", suffix=".u8", dir=dir)
        self._map: np.memmap | None = np.memmap(self._file, np.uint8, "w+",
                                                shape=(self.height, self.width))

    def write(self, y0: int, labels: np.ndarray) -> None:
        self._map[y0:y0 + len(labels)] = labels

    def rle(self, classes: Iterable[int] | None = None) -> dict[int, dict]:
        """``{class_id: {"size": [h, w], "counts": str}}`` for every class present (or
        for each of ``classes``, present or not)."""
        h, w = self.height, self.width
        block = max(1, BLOCK_BYTES // max(1, h))
        runs: dict[int, list[np.ndarray]] = {}
        end: dict[int, int] = {}  # class -> end (exclusive) of its last run so far
        cur_label, cur_start = -1, 0
        for c0 in range(0, w, block):
            flat = np.ascontiguousarray(self._map[:, c0:c0 + block].T).ravel()
            base = c0 * h
            starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
            labels = flat[starts]
            starts = starts + base
            if labels[0] == cur_label:  # the open run goes on into this block
                starts, labels = starts[1:], labels[1:]
            if len(starts) == 0:
                continue
            if cur_label >= 0:  # the open run ends where this block's first run begins
                starts = np.concatenate(([cur_start], starts))
                labels = np.concatenate(([cur_label], labels))
            ends = np.concatenate((starts[1:], [-1]))
            closed = slice(0, len(starts) - 1)
            self._collect(runs, end, starts[closed], ends[closed], labels[closed])
            cur_label, cur_start = int(labels[-1]), int(starts[-1])
        self._collect(runs, end, np.array([cur_start]), np.array([h * w]),
                      np.array([cur_label]))
        wanted = sorted(runs) if classes is None else [int(c) for c in classes]
        out = {}
        for k in wanted:
            parts = runs.get(k, [])
            counts = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            tail = h * w - end.get(k, 0)
            if tail or len(counts) == 0:
                counts = np.concatenate((counts, [tail]))
            out[k] = {"size": [h, w], "counts": counts_string(counts.tolist())}
        return out

    @staticmethod
    def _collect(runs, end, starts, ends, labels) -> None:
        for k in np.unique(labels).tolist():
            sel = labels == k
            s, e = starts[sel].astype(np.int64), ends[sel].astype(np.int64)
            gaps = s - np.concatenate(([end.get(k, 0)], e[:-1]))
            runs.setdefault(k, []).append(np.stack((gaps, e - s), axis=1).ravel())
            end[k] = int(e[-1])

    def close(self) -> None:
        self._map = None  # drops the mapping before the file goes
        self._file.close()

    def __enter__(self) -> LabelSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
