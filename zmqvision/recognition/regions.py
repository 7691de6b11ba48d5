"""Connected regions of a binary map, by runs, in numpy (no OpenCV, no scipy).

A text probability map thresholded at 0.3 is mostly empty; its set pixels form
horizontal runs, a few per row of each text line. Runs are found with one ``diff`` per
row, runs of neighbouring rows that touch (8-connectivity, as OpenCV's outer contours)
are paired with two ``searchsorted`` calls, and the pairs are joined by label
propagation with pointer jumping (a vectorised union-find: a handful of passes). The
cost grows with the number of runs, not of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Runs:
    """Runs of set pixels ``row[k], [start[k], stop[k])`` and the region ``label[k]``
    (0..``count``-1) each belongs to."""

    row: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    label: np.ndarray
    count: int

    def region_sums(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per region: the sum of ``values`` ``[H, W]`` over its pixels, and its pixel
        count (for a region's mean probability, DB's box score)."""
        csum = np.zeros((values.shape[0], values.shape[1] + 1), np.float64)
        np.cumsum(values, axis=1, out=csum[:, 1:])
        per_run = csum[self.row, self.stop] - csum[self.row, self.start]
        sums = np.bincount(self.label, per_run, self.count)
        pixels = np.bincount(self.label, self.stop - self.start, self.count)
        return sums, pixels

    def outline_points(self, region: int) -> np.ndarray:
        """``[K, 2]`` pixel-corner points (x, y) of a region's runs: their convex hull is
        the region's (continuous pixel coordinates, pixel ``k`` spans ``[k, k+1)``)."""
        m = self.label == region
        r, a, b = self.row[m], self.start[m], self.stop[m]
        return np.concatenate([np.stack([a, r], 1), np.stack([b, r], 1),
                               np.stack([a, r + 1], 1), np.stack([b, r + 1], 1)]
                              ).astype(np.float64)


def label_runs(mask: np.ndarray) -> Runs:
    """The 8-connected regions of a boolean ``[H, W]`` map."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    row, start = np.nonzero(edges == 1)
    row_e, stop = np.nonzero(edges == -1)
    n = len(row)
    if n == 0:
        e = np.zeros(0, np.int64)
        return Runs(e, e, e, e, 0)
    # Keys ordered like the runs (row-major); runs in a row are sorted and disjoint.
    width = w + 2
    start_key = row * width + start
    stop_key = row_e * width + stop
    # Runs b of row r+1 touching run a of row r: stop_b >= start_a and start_b <= stop_a.
    lo = np.searchsorted(stop_key, (row + 1) * width + start, side="left")
    hi = np.searchsorted(start_key, (row + 1) * width + stop, side="right")
    count = np.clip(hi - lo, 0, None)
    a = np.repeat(np.arange(n), count)
    b = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
    labels = np.arange(n)
    while len(a):
        m = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, m)
        np.minimum.at(labels, b, m)
        while True:  # pointer jumping: every run points at its root
            nxt = labels[labels]
            if np.array_equal(nxt, labels):
                break
            labels = nxt
        if np.array_equal(labels, before):
            break
    _, label = np.unique(labels, return_inverse=True)
    return Runs(row, start, stop, label.reshape(-1), int(label.max()) + 1)
