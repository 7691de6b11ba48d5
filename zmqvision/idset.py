"""A set of string ids that costs 8 bytes an id, for "have I seen this image?" at scale.

The sink must know every image of a job it has written (a repeat must not be written
again), and the ventilator every input it has admitted (the same file twice is one image).
A Python set of strings costs over 100 bytes an entry: 10 MiB more per 100k images, and a
job of millions would grow without end. Here each id is reduced to a 64-bit digest and
kept in a sorted numpy array (8 bytes), with a small Python set in front that takes new
ids and is merged into the array in batches, in linear time.

Two ids share a digest with probability about n² / 2⁶⁵ (3·10⁻⁸ for a million ids); such a
collision would make the second id look seen. That is the price of the flat memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

import numpy as np

_MERGE_EVERY = 8192


def digest64(item: str) -> int:
    """The 64-bit digest of an id; any string (ids off the wire need not be hex)."""
    return int.from_bytes(
        blake2b(item.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


class IdSet:
    """Add and test membership of string ids; no removal, no iteration."""

    __slots__ = ("_sorted", "_recent")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        for item in items:
            self.add(item)

    def add(self, item: str) -> None:
        key = digest64(item)
        if key in self._recent or self._in_sorted(key):
            return
        self._recent.add(key)
        if len(self._recent) >= _MERGE_EVERY:
            self._merge()

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        key = digest64(item)
        return key in self._recent or self._in_sorted(key)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    @property
    def nbytes(self) -> int:
        """Memory held by the array (the recent set adds at most a few hundred KiB)."""
        return self._sorted.nbytes

    def _in_sorted(self, key: int) -> bool:
        arr = self._sorted
        if not len(arr):
            return False
        i = int(np.searchsorted(arr, np.uint64(key)))
        return i < len(arr) and int(arr[i]) == key

    def _merge(self) -> None:
        new = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        new.sort()
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)
        self._recent = set()
