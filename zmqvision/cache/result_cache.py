"""What the pipeline calls: the ventilator looks results up before decoding an image, the
sink saves them as images complete.

Only successes are kept: a failed image is done again on every run, never answered from
the cache (its record would say ``"cached": true`` beside an error, and the summary would
count it both cached and failed). An error entry an older version saved is a miss.

Lookups may come from several threads (the ventilator's decode threads); saves are queued
and written in one batch by ``flush`` (the sink calls it with its acks, every 0.1 s), so a
busy sink pays one SQLite transaction or one Redis pipeline per batch, not per image.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from zmqvision.boxes import Detections
from zmqvision.cache.entry import Entry, EntryError, decode, encode
from zmqvision.cache.guard import Guarded
from zmqvision.cache.key import entry_key
from zmqvision.protocol import SegmentCached, Stage2Cached

log = logging.getLogger("zmqvision.cache")

MAX_PENDING = 10_000  # saves queued at most; beyond, the oldest are dropped (a later miss)
_FAILED = object()


class ResultCache:
    """Look up and save image results in a store, never failing the caller."""

    def __init__(self, store) -> None:
        self.guard = Guarded(store)
        self.url: str = store.url
        self._lock = threading.Lock()
        self._pending: list[tuple[str, bytes, float]] = []
        self.hits = self.misses = self.corrupt = self.saved = 0

    def lookup(self, settings: str, content_hash: str, model: str, *,
               embeddings: bool = False,
               stage2: tuple[str, int] | None = None, segment: bool = False) -> Entry | None:
        """The entry for these bytes under these settings, or None (a miss). A corrupt,
        foreign or other-version entry is a miss: logged and deleted, so the result
        computed now replaces it. ``embeddings``: the job's records need them (``--embed``;
        its settings are already another key): an entry without them is unusable too.
        ``stage2``: a two-stage job's (answer, points per object) (``tasks.stage2.
        cache_needs``): an entry without its stage 2 (one written before entries had it),
        or with another kind of answer or point count, is unusable as well. ``segment``:
        a segmentation job's; an entry without its mask (``Entry.segment``) likewise."""
        key = entry_key(settings, content_hash)
        data = None if key is None else self.guard.call("get", None, key)
        if data is None:
            self._count("misses")
            return None
        try:
            entry = decode(bytes(data), key)
            if entry.model != model:
                raise EntryError(f"entry of model {entry.model}, job uses {model}")
            if embeddings and entry.error is None and entry.embeddings is None:
                raise EntryError("entry without the embeddings the job needs")
            if stage2 is not None and entry.error is None:
                _check_stage2(entry, *stage2)
            if segment and entry.error is None and entry.segment is None:
                raise EntryError("entry without the mask the job needs")
        except EntryError as exc:
            self._count("corrupt")
            self._count("misses")
            n = self.corrupt
            if n <= 10 or n % 1000 == 0:
                log.warning("result cache %s: entry %s is unusable (%s); ignoring it, it will "
                            "be replaced (%d so far)", self.url, key, exc, n)
            self.guard.call("delete", None, key)
            return None
        if entry.error is not None:  # a failure an older version saved: done again
            self._count("misses")
            self.guard.call("delete", None, key)
            return None
        self._count("hits")
        return entry

    def save(self, settings: str, content_hash: str, *, model: str, width: int, height: int,
             tiles: int, detections: Detections | None, error: dict | None = None,
             embeddings: np.ndarray | None = None,
             stage2: Stage2Cached | None = None,
             segment: SegmentCached | None = None) -> bool:
        """Queue one image's result (``embeddings``: float32 [tiles, D], an ``--embed``
        job's; ``stage2``: a two-stage job's objects' points and answers, ``detections``
        being those objects; ``segment``: a segmentation job's mask file and counts);
        False when it cannot be keyed or is a failure."""
        key = entry_key(settings, content_hash)
        if key is None or error is not None:
            return False
        now = time.time()
        entry = Entry(key=key, model=model, width=width, height=height, tiles=tiles,
                      detections=detections if detections is not None else Detections.empty(),
                      error=error, created=now, embeddings=embeddings, stage2=stage2,
                      segment=segment)
        with self._lock:
            self._pending.append((key, encode(entry), now))
            if len(self._pending) > MAX_PENDING:
                del self._pending[0]
        return True

    def flush(self) -> None:
        """Write the queued saves in one batch. While the store is down they stay queued
        (at most MAX_PENDING, the oldest dropped first) and go when it is back."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        if self.guard.call("put_many", _FAILED, batch) is _FAILED:
            with self._lock:
                self._pending[:0] = batch
                del self._pending[:max(0, len(self._pending) - MAX_PENDING)]
            return
        self._count("saved", len(batch))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def counts(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt,
                "saved": self.saved, "store_failures": self.guard.failures}

    def close(self) -> None:
        self.flush()
        if self._pending:
            log.warning("result cache %s: %d results could not be saved", self.url,
                        len(self._pending))
        self.guard.close()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


def _check_stage2(entry: Entry, answer: str, points: int) -> None:
    """EntryError unless the entry holds a two-stage job's stage 2 of this kind."""
    s2 = entry.stage2
    if s2 is None:
        raise EntryError("entry without the stage 2 the job needs")
    if s2.answer != answer or s2.points.shape[1] != points:
        raise EntryError(f"entry's stage 2 is {s2.answer}s with {s2.points.shape[1]} points, "
                         f"the job needs {answer}s with {points}")
