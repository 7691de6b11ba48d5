"""Images a job no longer holds but whose late results may still come: published records
(publish-only jobs keep no written-set) and withdrawn images. Late results for them are
dropped quietly instead of waiting as early results and being counted bad.

Bounded by count and by the bytes of the keys (oldest forgotten first; ids may be 1,024
characters each): late results come within seconds of the image's end, and a job that
never ends must not grow here. Past the bound, a late result waits among the job's early
results, which are bounded too."""

from __future__ import annotations

from collections import OrderedDict

MAX_FORGOTTEN = 32_768  # about 4 MB of keys of usual length
MAX_FORGOTTEN_KEY_BYTES = 4 << 20
KEY_OVERHEAD_BYTES = 120  # a str key and its OrderedDict entry
PUBLISHED = "published"
WITHDRAWN = "withdrawn"


class Forgotten:
    def __init__(self, limit: int = MAX_FORGOTTEN,
                 max_bytes: int = MAX_FORGOTTEN_KEY_BYTES) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.bytes = 0
        self._why: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def _key(job: str, image: str) -> str:
        return f"{job}\0{image}"

    def add(self, job: str, image: str, why: str) -> None:
        key = self._key(job, image)
        if key not in self._why:
            self.bytes += len(key) + KEY_OVERHEAD_BYTES
        self._why[key] = why
        self._why.move_to_end(key)
        while len(self._why) > self.limit or self.bytes > self.max_bytes:
            old, _ = self._why.popitem(last=False)
            self.bytes -= len(old) + KEY_OVERHEAD_BYTES

    def get(self, job: str, image: str) -> str | None:
        return self._why.get(self._key(job, image))

    def pop(self, job: str, image: str) -> str | None:
        """Announced again: a new image from now on."""
        key = self._key(job, image)
        why = self._why.pop(key, None)
        if why is not None:
            self.bytes -= len(key) + KEY_OVERHEAD_BYTES
        return why

    def __len__(self) -> int:
        return len(self._why)
