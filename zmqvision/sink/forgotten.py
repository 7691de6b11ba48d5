"""Images a job no longer holds but whose late results may still come: published records
(publish-only jobs keep no written-set) and withdrawn images. Late results for them are
dropped quietly instead of waiting as early results and being counted bad.

Bounded by count (oldest forgotten first): late results come within seconds of the
image's end, and a job that never ends must not grow here. Past the bound, a late result
waits among the job's early results, which are bounded too."""

from __future__ import annotations

from collections import OrderedDict

MAX_FORGOTTEN = 32_768  # about 4 MB of keys
PUBLISHED = "published"
WITHDRAWN = "withdrawn"


class Forgotten:
    def __init__(self, limit: int = MAX_FORGOTTEN) -> None:
        self.limit = limit
        self._why: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def _key(job: str, image: str) -> str:
        return f"{job}\0{image}"

    def add(self, job: str, image: str, why: str) -> None:
        key = self._key(job, image)
        self._why[key] = why
        self._why.move_to_end(key)
        while len(self._why) > self.limit:
            self._why.popitem(last=False)

    def get(self, job: str, image: str) -> str | None:
        return self._why.get(self._key(job, image))

    def pop(self, job: str, image: str) -> str | None:
        """Announced again: a new image from now on."""
        return self._why.pop(self._key(job, image), None)

    def __len__(self) -> int:
        return len(self._why)
