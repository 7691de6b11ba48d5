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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from zmqvision import io, protocol, results
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
    # Which frame of the file this is, among ``frames`` (1: a still image, whose record
    # says nothing of frames). ``rest``: the file's next frames, decoded one per ``next``
    # (``frames="all"``); the reader hands them out after this one.
    frame: int = 0
    frames: int | None = 1  # None: a live stream's frame (no count)
    rest: Iterator[Loaded] | None = None
    time: float | None = None  # a video frame's time in seconds (zmqvision.video)
    arrived: float | None = None  # a live job's input: when it arrived (monotonic)
    rereadable: bool = True  # False: a stream's frame; its pixels are kept until written
    # The file's bytes as read (no copy), for a still image: what ``--wire image`` sends
    # (``image.pixels`` is None when the reader only probed the header: ``decode=False``).
    data: bytes | None = None


def _failed(path: str, exc: io.ImageError, digest: str | None = None) -> Loaded:
    return Loaded(path, None, {"type": exc.type, "message": exc.message}, digest)


def _unreadable(path: str, exc: Exception, digest: str | None = None) -> Loaded:
    return Loaded(path, None, {"type": "unreadable", "message": f"{path}: {exc}"}, digest)


def probe_bytes(data: bytes, path: str, digest: str, max_pixels: int) -> io.LoadedImage | None:
    """The image's displayed size from its header, checked against ``max_pixels``, with no
    pixel decoded (``pixels`` None): what the ventilator needs to plan and announce an
    image a worker decodes (``--wire image``). None for a multi-frame file (decoded as
    before). Raises ``io.ImageError`` as decoding would for what the header shows; a file
    damaged further on is found by the worker, whose decode gives the same error."""
    if io.sniff_format(data[:io._HEAD_BYTES]) == "JPEG":
        io._check_jpeg_markers(data, path)
    with io._open(data, path) as im:
        if io._frame_count(im, data, im.format, 2) > 1:
            return None
        width, height = im.size
        if io._swaps_axes(im):
            width, height = height, width
        io._check_pixels(width, height, max_pixels, path, 0)
        return io.LoadedImage(pixels=None, width=width, height=height,  # type: ignore[arg-type]
                              content_hash=digest, format=im.format or "", mode=im.mode)


def load_bytes(data: bytes, path: str, max_pixels: int, lookup: Lookup | None = None,
               reduce: Reduce | None = None, *, frames: io.FrameMode = "first",
               max_frames: int = io.DEFAULT_MAX_FRAMES, decode: bool = True) -> Loaded:
    """Hash the bytes; look the result up (a hit is not decoded); decode otherwise
    (``decode=False``: only probe a still image's header, ``probe_bytes``).

    The first frame of a multi-frame file; with ``frames="all"`` its ``rest`` yields the
    others (each looked up in the cache under ``protocol.frame_hash``). A still image's
    ``Loaded`` keeps its bytes (``data``) for image-level dispatch."""
    digest = None
    try:
        digest = io.content_hash(data) if data else None
        count = (io.frame_count(data, max_frames=max_frames)
                 if frames == "all" and digest is not None else 1)
        if count > 1:
            if count > max_frames:
                raise io.ImageError("too_large", f"{path}: more than {max_frames:,} frames; "
                                                 f"--frames all reads files of at most "
                                                 f"{max_frames:,}")
            every = _all_frames(data, path, digest, count, max_pixels, lookup, reduce,
                                max_frames)
            first = next(every)
            first.rest = every if first.error is None or first.hit is not None else None
            return first
        if lookup is not None and digest is not None:
            hit = lookup(digest)
            if hit is not None:  # frame 0's result; how many frames, from the headers
                return Loaded(path, None, attach_path(hit.error, path), digest, hit,
                              frames=io.frame_count(data, max_frames=max_frames))
        if not decode and digest is not None:
            probed = probe_bytes(data, path, digest, max_pixels)
            if probed is not None:
                return Loaded(path, probed, None, digest, data=data)
        image = io.decode_image(data, max_pixels=max_pixels, name=path, digest=digest,
                                reduce=reduce)
        return Loaded(path, image, None, digest, frames=image.frames,
                      data=data if image.frames == 1 else None)
    except io.ImageError as exc:
        return _failed(path, exc, digest)
    except Exception as exc:  # an image must never take the job down
        return _unreadable(path, exc, digest)


def _all_frames(data: bytes, path: str, digest: str, count: int, max_pixels: int,
                lookup: Lookup | None, reduce: Reduce | None,
                max_frames: int) -> Iterator[Loaded]:
    """Every frame of a multi-frame file, one ``Loaded`` per ``next`` (never two frames'
    pixels at once). A frame whose result is cached is a hit; the file is decoded only if
    some frame is not (a GIF frame is drawn over the ones before it: frame k is decoded by
    decoding those). A damaged frame is the last: its error, after the frames before it."""
    hits = [None if lookup is None else lookup(protocol.frame_hash(digest, k))
            for k in range(count)]

    def hit(k: int) -> Loaded:
        return Loaded(path, None, attach_path(hits[k].error, path), digest, hits[k],
                      frame=k, frames=count)

    if all(h is not None for h in hits):
        for k in range(count):
            yield hit(k)
        return
    decoded = io.decode_frames(data, frames="all", max_pixels=max_pixels, name=path,
                               digest=digest, reduce=reduce, max_frames=max_frames)
    k = 0
    try:
        for k in range(count):
            image = next(decoded, None)
            if image is None:  # fewer frames than the headers promised
                raise io.ImageError("corrupt_image", f"{path}: frame {k} of {count} is "
                                                     "missing (the file ends before it)")
            yield hit(k) if hits[k] is not None else Loaded(path, image, None, digest,
                                                             frame=k, frames=count)
    except io.ImageError as exc:
        yield Loaded(path, None, {"type": exc.type, "message": _rest_unread(exc.message, k,
                                                                              count)},
                     digest, frame=k, frames=count)
    except Exception as exc:  # noqa: BLE001 - an image must never take the job down
        yield Loaded(path, None, {"type": "unreadable", "message": _rest_unread(
            f"{path}: {exc}", k, count)}, digest, frame=k, frames=count)
    finally:
        decoded.close()


def _rest_unread(message: str, k: int, count: int) -> str:
    if k + 1 < count:
        return f"{message}; frames {k + 1}-{count - 1} after it were not read"
    return message


def load_path(path: str, max_pixels: int, lookup: Lookup | None = None,
              reduce: Reduce | None = None, *,
              max_bytes: int = io.DEFAULT_MAX_FILE_BYTES, frames: io.FrameMode = "first",
              max_frames: int = io.DEFAULT_MAX_FRAMES, fps: float | None = None,
              decode: bool = True) -> Loaded:
    """Read the file once, then ``load_bytes`` on the same bytes. A file over
    ``max_bytes`` is not read: it gets a ``too_large`` error. A video file
    (``zmqvision.video``) is its frames sampled at ``fps``, decoded one at a time."""
    from zmqvision import video

    if video.is_video(path):
        return video.video_frames(path, max_pixels, lookup, fps)
    try:
        data = io.read_file(path, max_bytes=max_bytes)
    except io.ImageError as exc:
        return _failed(path, exc)
    except Exception as exc:  # noqa: BLE001 - an image must never take the job down
        return _unreadable(path, exc)
    return load_bytes(data, path, max_pixels, lookup, reduce, frames=frames,
                      max_frames=max_frames, decode=decode)


def load_frame(path: str, frame: int, max_pixels: int, reduce: Reduce | None = None, *,
               max_bytes: int = io.DEFAULT_MAX_FILE_BYTES) -> Loaded:
    """Frame ``frame`` of a file, read anew (a tile of it must be sent again): the frames
    before it are decoded too, as drawing it needs for a GIF. Never a cache hit."""
    from zmqvision import video

    try:
        if video.is_video(path):
            return video.read_frame(path, frame, max_pixels)
    except io.ImageError as exc:
        return _failed(path, exc)
    except Exception as exc:  # noqa: BLE001
        return _unreadable(path, exc)
    if not frame:
        return load_path(path, max_pixels, reduce=reduce, max_bytes=max_bytes)
    try:
        data = io.read_file(path, max_bytes=max_bytes)
        digest = io.content_hash(data)
        decoded = io.decode_frames(data, frames="all", max_pixels=max_pixels, name=path,
                                   digest=digest)
        try:
            for image in decoded:
                if image.frame == frame:
                    return Loaded(path, image, None, digest, frame=frame, frames=image.frames)
        finally:
            decoded.close()
        raise io.ImageError("corrupt_image", f"{path}: has no frame {frame}")
    except io.ImageError as exc:
        return _failed(path, exc)
    except Exception as exc:  # noqa: BLE001
        return _unreadable(path, exc)


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
    order. It starts at once, so the first tiles are cut by the time a worker asks.

    With ``frames="all"`` a multi-frame file is one input per frame: as its frame k is
    handed out, frame k + 1 is decoded next, ahead of the following paths (a video file's
    sampled frames too).

    Live inputs (``follow.LiveInputs``: a followed folder, streams) are taken with their
    ``take()``, which never blocks: a path, a frame already decoded, ``follow.WAIT`` (none
    now: not exhausted) or None (the end); a new arrival wakes the loop (``on_ready``)."""

    def __init__(self, paths: Iterable[str], pool: ThreadPoolExecutor, depth: int,
                 max_pixels: int, lookup: Lookup | None = None, reduce: Reduce | None = None,
                 on_ready: Callable[[], None] | None = None, *,
                 max_bytes: int = io.DEFAULT_MAX_FILE_BYTES,
                 frames: io.FrameMode = "first", fps: float | None = None,
                 decode: bool = True) -> None:
        self.paths = paths  # what it walks (an io.ImageWalk counts what it skipped)
        self._take = getattr(paths, "take", None)  # live inputs: never block the loop
        if self._take is not None and on_ready is not None:
            paths.set_wake(on_ready)
        self._paths = iter(paths) if self._take is None else None
        self._fps = fps
        self._pool = pool
        self._pending: deque[Future] = deque()  # loads, in input order
        # A load of a file's next frame → the frames it is one of (a path's load has
        # none: its Loaded.rest holds the file's further frames, if any).
        self._rest: dict[Future, Iterator[Loaded]] = {}
        self._depth, self._max_pixels, self._lookup = depth, max_pixels, lookup
        self._reduce, self._on_ready, self._max_bytes = reduce, on_ready, max_bytes
        self._frames = frames
        # False (``--wire image``): still images are only probed, their workers decode them
        self._decode = decode
        self.exhausted = False  # no path left to read and nothing pending
        self._fill()

    def _submit(self, fn: Callable, *args, **kwargs) -> Future:
        future = self._pool.submit(fn, *args, **kwargs)
        if self._on_ready is not None:
            future.add_done_callback(lambda _f: self._on_ready())
        return future

    def _fill(self) -> None:
        while len(self._pending) <= self._depth:
            path = next(self._paths, None) if self._take is None else self._take()
            if path is None:
                self.exhausted = not self._pending
                return
            if isinstance(path, str) and not path:  # follow.WAIT: nothing now, more to come
                return
            if isinstance(path, Loaded):  # a stream's frame, decoded by its reader
                done: Future = Future()
                done.set_result(path)
                self._pending.append(done)
                continue
            self._pending.append(self._submit(
                _load_arrived, path, self._max_pixels, self._lookup, self._reduce,
                max_bytes=self._max_bytes, frames=self._frames, fps=self._fps,
                decode=self._decode))

    def ready(self) -> Loaded | None:
        """The next input if it is loaded; None while it is not (or none is left)."""
        if self._take is not None and not self.exhausted:
            self._fill()  # live inputs: what arrived since
        while self._pending and self._pending[0].done():
            future = self._pending.popleft()
            rest = self._rest.pop(future, None)
            loaded = future.result()
            if loaded is not None and loaded.rest is not None:
                rest, loaded.rest = loaded.rest, None
            if loaded is not None and rest is not None:  # the frame after it comes next
                following = self._submit(next, rest, None)
                self._rest[following] = rest
                self._pending.appendleft(following)
            self._fill()
            if loaded is not None:  # None: a multi-frame file's frames ran out
                return loaded
        return None

    def next(self) -> Loaded | None:
        """The next input, waiting for it; None when there are no more."""
        while self._pending:
            self._pending[0].result()
            loaded = self.ready()
            if loaded is not None:
                return loaded
        return None

    def close(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._rest.clear()
        self.exhausted = True
        if self._take is not None:
            self.paths.close()  # its watch and stream threads end


def _load_arrived(path: str, *args, **kwargs) -> Loaded:
    """``load_path``, carrying a live input's arrival time (``follow`` paths have one) to
    its frames."""
    loaded = load_path(str(path), *args, **kwargs)
    arrived = getattr(path, "arrived", None)
    if arrived is not None:
        loaded.arrived = arrived
        if loaded.rest is not None:
            loaded.rest = _arriving(loaded.rest, arrived)
    return loaded


def _arriving(frames: Iterator[Loaded], arrived: float) -> Iterator[Loaded]:
    for loaded in frames:
        loaded.arrived = arrived
        yield loaded


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
