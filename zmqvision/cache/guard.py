"""A cache that fails must never fail the job.

``Guarded`` wraps a store. When a call fails (Redis unreachable or gone mid-job, a SQLite
file locked past its timeout or on a full disk) it logs one warning, answers as if the
cache were empty (a lookup misses, a save is dropped) and leaves the store alone until a
backoff has passed (1 s, doubling to 30 s); then the next call tries again, and the first
that succeeds logs that the cache is back. A job that loses its cache is slower, never
wrong and never lost: every miss goes to the workers as if there were no cache.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("zmqvision.cache")

T = TypeVar("T")
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0


class Guarded:
    """Calls into a store, or skips them while it is known to be down."""

    def __init__(self, store: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.url = store.url
        self.clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = FIRST_BACKOFF_S
        self.failures = 0
        self.skipped = 0

    @property
    def available(self) -> bool:
        return self._down_since is None

    def call(self, name: str, default: T, *args: Any) -> T:
        """``store.name(*args)``, or ``default`` if it fails or the store is resting."""
        with self._lock:
            if self._down_since is not None and self.clock() < self._retry_at:
                self.skipped += 1
                return default
        try:
            result = getattr(self.store, name)(*args)
        except Exception as exc:  # noqa: BLE001 - any store failure: go on without it
            self._failed(exc)
            return default
        if self._down_since is not None:
            self._recovered()
        return result

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.failures += 1
            now = self.clock()
            first = self._down_since is None
            if first:
                self._down_since = now
                self._backoff = FIRST_BACKOFF_S
            else:
                self._backoff = min(MAX_BACKOFF_S, self._backoff * 2)
            self._retry_at = now + self._backoff
            backoff = self._backoff
        reset = getattr(self.store, "reset", None)
        if reset is not None:
            with contextlib.suppress(Exception):  # a broken client may fail to close
                reset()
        if first:
            log.warning("result cache %s is not usable (%s: %s); going on without it, "
                        "trying again in %.0f s", self.url, type(exc).__name__, exc, backoff)
        else:
            log.debug("result cache %s still not usable (%s); next try in %.0f s",
                      self.url, exc, backoff)

    def _recovered(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            down_for = self.clock() - self._down_since
            self._down_since = None
            self._backoff = FIRST_BACKOFF_S
        log.warning("result cache %s is back after %.1f s", self.url, down_for)

    def close(self) -> None:
        try:
            self.store.close()
        except Exception as exc:  # noqa: BLE001
            log.debug("closing result cache %s: %s", self.url, exc)
