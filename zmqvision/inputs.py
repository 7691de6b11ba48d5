"""Inputs, read and decoded ahead of the ventilator's loop: files of a job, and the images a
Pool's caller hands over (a path, encoded bytes, or a numpy array).

Each input is read once: its bytes are hashed, looked up in the result cache (a hit is
never decoded), and decoded otherwise. Decoding runs on a thread pool (Pillow releases the
GIL) and never blocks the loop: it asks for the next input that is ready, and a finished
decode wakes it.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from zmqvision import io, results
from zmqvision.cache import Entry
from zmqvision.cache.entry import attach_path
from zmqvision.idset import IdSet

Lookup = Callable[[str], "Entry | None"]
Reduce = Callable[[int, int], int]


@dataclass
class Loaded:
    """One input after reading: pixels, or the error that becomes its record, or a hit."""

    path: str
    image: io.LoadedImage | None
    error: dict | None
    hash: str | None = None  # content hash, whenever the bytes could be read
    hit: Entry | None = None  # the result cache had this image's result: not decoded


def _failed(path: str, exc: io.ImageError, digest: str | None = None) -> Loaded:
    return Loaded(path, None, {"type": exc.type, "message": exc.message}, digest)


def load_bytes(data: bytes, path: str, max_pixels: int, lookup: Lookup | None = None,
               reduce: Reduce | None = None) -> Loaded:
    """Hash the bytes; look the result up (a hit is not decoded); decode otherwise."""
    digest = None
    try:
        digest = io.content_hash(data) if data else None
        if lookup is not None and digest is not None:
            hit = lookup(digest)
            if hit is not None:
                return Loaded(path, None, attach_path(hit.error, path), digest, hit)
        image = io.decode_image(data, max_pixels=max_pixels, name=path, digest=digest,
                                reduce=reduce)
        return Loaded(path, image, None, digest)
    except io.ImageError as exc:
        return _failed(path, exc, digest)
    except Exception as exc:  # an image must never take the job down
        return Loaded(path, None, {"type": "unreadable", "message": f"{path}: {exc}"}, digest)


def load_path(path: str, max_pixels: int, lookup: Lookup | None = None,
              reduce: Reduce | None = None, *,
              max_bytes: int = io.DEFAULT_MAX_FILE_BYTES) -> Loaded:
    """Read the file once, then ``load_bytes`` on the same bytes. A file over
    ``max_bytes`` is not read: it gets a ``too_large`` error."""
    try:
        data = io.read_file(path, max_bytes=max_bytes)
    except io.ImageError as exc:
        return _failed(path, exc)
    except Exception as exc:  # noqa: BLE001 - an image must never take the job down
        return Loaded(path, None, {"type": "unreadable", "message": f"{path}: {exc}"})
    return load_bytes(data, path, max_pixels, lookup, reduce)


def array_hash(pixels: np.ndarray) -> str:
    """Content hash of an RGB array: its shape and bytes (an array has no file bytes)."""
    h = hashlib.blake2b(digest_size=32)
    h.update(repr(pixels.shape).encode())
    h.update(memoryview(np.ascontiguousarray(pixels)).cast("B"))
    return "blake2b-rgb:" + h.hexdigest()


def load_array(array: np.ndarray, name: str, max_pixels: int,
               lookup: Lookup | None = None) -> Loaded:
    """An in-memory image: ``uint8`` ``[H, W, 3]`` RGB (``[H, W]`` grey and ``[H, W, 4]``
    RGBA are converted). Anything else is this image's ``unsupported_format`` error."""
    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        return Loaded(name, None, {"type": "unsupported_format", "message":
                                   f"{name}: arrays must be uint8 [H, W, 3] RGB (or [H, W] "
                                   f"grey, [H, W, 4] RGBA), got {a.dtype} {list(a.shape)}"})
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    height, width = a.shape[:2]
    if height < 1 or width < 1:
        return Loaded(name, None, {"type": "empty_file", "message": f"{name}: empty array"})
    if width * height > max_pixels:
        return Loaded(name, None, {"type": "too_large", "message":
                                   f"{name}: {width}x{height} is over {max_pixels} pixels"})
    a = np.ascontiguousarray(a)  # no copy when it already is (the caller keeps it unchanged)
    digest = array_hash(a)
    if lookup is not None:
        hit = lookup(digest)
        if hit is not None:
            return Loaded(name, None, attach_path(hit.error, name), digest, hit)
    image = io.LoadedImage(pixels=a, width=width, height=height, content_hash=digest,
                           format="array", mode="RGB")
    return Loaded(name, image, None, digest)


class ReadAhead:
    """Read and decode up to ``depth`` paths ahead on a thread pool, handed out in input
    order. It starts at once, so the first tiles are cut by the time a worker asks."""

    def __init__(self, paths: Iterable[str], pool: ThreadPoolExecutor, depth: int,
                 max_pixels: int, lookup: Lookup | None = None, reduce: Reduce | None = None,
                 on_ready: Callable[[], None] | None = None, *,
                 max_bytes: int = io.DEFAULT_MAX_FILE_BYTES) -> None:
        self.paths = paths  # what it walks (an io.ImageWalk counts what it skipped)
        self._paths = iter(paths)
        self._pool = pool
        self._pending: deque[Future] = deque()
        self._depth, self._max_pixels, self._lookup = depth, max_pixels, lookup
        self._reduce, self._on_ready, self._max_bytes = reduce, on_ready, max_bytes
        self.exhausted = False  # no path left to read and nothing pending
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) <= self._depth:
            path = next(self._paths, None)
            if path is None:
                self.exhausted = not self._pending
                return
            future = self._pool.submit(load_path, path, self._max_pixels, self._lookup,
                                       self._reduce, max_bytes=self._max_bytes)
            if self._on_ready is not None:
                future.add_done_callback(lambda _f: self._on_ready())
            self._pending.append(future)

    def ready(self) -> Loaded | None:
        """The next input if it is loaded; None while it is not (or none is left)."""
        if not self._pending or not self._pending[0].done():
            return None
        loaded = self._pending.popleft().result()
        self._fill()
        return loaded

    def next(self) -> Loaded | None:
        """The next input, waiting for it; None when there are no more."""
        if not self._pending:
            return None
        self._pending[0].result()
        return self.ready()

    def close(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self.exhausted = True


def first_input_cached(paths: Iterable[str], lookup: Lookup | None) -> bool:
    """Whether a job's first input has a result in the cache, looked up before anything
    else starts: ``run`` then leaves the workers (and their model) for the first image
    that needs tiles, and a run whose images are all cached starts none."""
    if lookup is None:
        return False
    path = next(iter(paths), None)
    if path is None:
        return False
    try:
        digest = io.content_hash(io.read_file(path))
    except io.ImageError:
        return False
    return lookup(digest) is not None


def read_resume(path: str) -> tuple[str | None, IdSet]:
    """The job id and the ids of the images a results file already has a record for."""
    job, done = None, IdSet()
    if not os.path.exists(path):
        return None, done
    for rec in results.read_jsonl(path, skip_bad=True):
        job = rec.get("job", job)
        if isinstance(rec.get("id"), str):
            done.add(rec["id"])
    return job, done
