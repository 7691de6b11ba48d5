"""Video files and live streams as images: one image per sampled frame.

PyAV (``pip install 'zmqvision[video]'``; its wheels bundle FFmpeg) decodes anything
FFmpeg reads: files (``clip.mp4``) and streams (``rtsp://camera/stream``, ``http://``,
``udp://``, ``srt://``, a V4L2 device ``/dev/video0``). Without it zmqvision still runs;
a video input gets an error record that says how to install it.

Frames are sampled by time (``fps``: frame k is taken at the first frame whose time
reaches k / fps; None: every frame) and decoded one at a time, so memory holds a frame or
two whatever the video's length:

- a file is one input whose frames follow one another (``video_frames``, the same lazy
  ``Loaded.rest`` chain as an animated GIF's frames): read at the pool's pace, nothing
  dropped. Each frame's record has ``"frame"`` (its index in the video), ``"frames"``
  (the video's frame count, when the container says it) and ``"time"`` (seconds); its id
  is ``protocol.image_id(file hash, path, frame)``, its cache key
  ``protocol.frame_hash(file hash, frame)``, as for multi-frame images.
- a stream is read by a ``LiveReader`` thread at its own pace into the live job's bounded
  queue (``follow.Arrivals``), where ``--when-behind`` decides what happens when the pool
  is slower than the camera. Its frames have no count, no hash (they cannot be read
  again: the engine keeps their pixels until written) and ``"time"`` counts from the
  first frame read.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from zmqvision import io, protocol

log = logging.getLogger("zmqvision.video")

VIDEO_EXTENSIONS = frozenset({"mp4", "m4v", "mov", "mkv", "avi", "webm", "mpg", "mpeg", "ts",
                              "mts", "m2ts", "flv", "wmv", "3gp", "ogv", "h264", "h265"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://",
                  "udp://", "tcp://", "srt://", "rtp://")
INSTALL_HINT = "pip install 'zmqvision[video]'"
OPEN_TIMEOUT_S = 10.0


def is_stream(source: str) -> bool:
    """A live source: a URL FFmpeg reads, or a capture device."""
    s = str(source)
    return s.lower().startswith(STREAM_SCHEMES) or s.startswith("/dev/video")


def is_video(path: str) -> bool:
    """A video file by its extension (or a stream)."""
    return is_stream(path) or os.path.splitext(str(path))[1].lower().lstrip(".") in VIDEO_EXTENSIONS


def available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _av():
    try:
        import av
    except ImportError:
        raise io.ImageError("unsupported_format", f"video needs PyAV, which is not "
                                                  f"installed: {INSTALL_HINT}") from None
    return av


def file_hash(path: str, chunk: int = 1 << 20) -> str:
    """``io.content_hash`` of a file read in chunks (a video is not held in memory)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return "blake2b:" + h.hexdigest()


class Sampler:
    """Which frames to take at ``fps`` frames per second of video time: the first frame
    at or after each k / fps (None: every frame). Times are relative to the first frame."""

    def __init__(self, fps: float | None) -> None:
        if fps is not None and not fps > 0:
            raise ValueError("fps must be > 0")
        self.fps = fps
        self._next = 0.0

    def take(self, t: float) -> bool:
        if self.fps is None:
            return True
        if t + 1e-6 < self._next:
            return False
        self._next = (math.floor(t * self.fps + 1e-6) + 1) / self.fps
        return True


@dataclass
class VideoFrame:
    index: int  # in the video, from 0
    time: float  # seconds
    pixels: np.ndarray  # uint8 [H, W, 3] RGB
    frames: int | None  # the video's frame count, when known


def decode(source: str, fps: float | None = None, *, live: bool = False) -> Iterator[VideoFrame]:
    """The sampled frames of a file or stream, decoded one at a time (the container is
    closed when the generator is). ``io.ImageError`` when it cannot be opened."""
    av = _av()
    options = {"rtsp_transport": "tcp"} if source.lower().startswith("rtsp") else {}
    try:
        container = av.open(source, options=options, timeout=OPEN_TIMEOUT_S)
    except FileNotFoundError:
        raise io.ImageError("not_found", f"{source}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - FFmpeg's errors are many
        raise io.ImageError("unreadable", f"{source}: cannot open as video: {exc}") from None
    try:
        if not container.streams.video:
            raise io.ImageError("unsupported_format", f"{source}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = None if live else (stream.frames or None)
        sampler, first, rate = Sampler(fps), None, float(stream.average_rate or 25)
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else index / rate
            if first is None:
                first = t if live else 0.0
            t -= first
            if not sampler.take(t):
                continue
            yield VideoFrame(index, round(t, 6), frame.to_ndarray(format="rgb24"),
                             total if total is not None and index < total else None)
    finally:
        container.close()


def _frame_image(f: VideoFrame, digest: str | None, name: str, max_pixels: int):
    h, w = f.pixels.shape[:2]
    if w * h > max_pixels:
        raise io.ImageError("too_large", f"{name}: {w}x{h} frames are over {max_pixels} pixels")
    pixels = np.ascontiguousarray(f.pixels)
    pixels.flags.writeable = False
    return io.LoadedImage(pixels=pixels, width=w, height=h, content_hash=digest or "",
                          format="video", mode="RGB", frame=f.index, frames=f.frames or 0)


def video_frames(path: str, max_pixels: int, lookup=None, fps: float | None = None):
    """A video file's first sampled frame as an ``inputs.Loaded`` whose ``rest`` yields
    the next ones, one decode per ``next`` (see the module doc)."""
    from zmqvision.inputs import Loaded

    try:
        digest = file_hash(path)
    except OSError as exc:
        kind = "not_found" if isinstance(exc, FileNotFoundError) else "unreadable"
        return Loaded(path, None, {"type": kind, "message": f"{path}: {exc}"})

    def frames() -> Iterator[Loaded]:
        try:
            for f in decode(path, fps):
                hit = None if lookup is None else lookup(protocol.frame_hash(digest, f.index))
                if hit is not None:
                    from zmqvision.cache.entry import attach_path

                    yield Loaded(path, None, attach_path(hit.error, path), digest, hit,
                                 frame=f.index, frames=f.frames, time=f.time)
                    continue
                yield Loaded(path, _frame_image(f, digest, path, max_pixels), None, digest,
                             frame=f.index, frames=f.frames, time=f.time)
        except io.ImageError as exc:  # the file's record says it; frames before it stay
            yield Loaded(path, None, {"type": exc.type, "message": exc.message}, digest)
        except Exception as exc:  # noqa: BLE001 - a video must never take the job down
            yield Loaded(path, None, {"type": "unreadable", "message": f"{path}: {exc}"},
                         digest)

    every = frames()
    first = next(every, None)
    if first is None:
        return Loaded(path, None, {"type": "corrupt_image",
                                   "message": f"{path}: the video has no frame"}, digest)
    first.rest = every if first.error is None or first.hit is not None else None
    return first


def read_frame(path: str, index: int, max_pixels: int):
    """Frame ``index`` of a video file decoded anew (a tile of it must be sent again)."""
    from zmqvision.inputs import Loaded

    digest = file_hash(path)
    for f in decode(path, None):
        if f.index == index:
            return Loaded(path, _frame_image(f, digest, path, max_pixels), None, digest,
                          frame=f.index, frames=f.frames, time=f.time)
    raise io.ImageError("corrupt_image", f"{path}: has no frame {index}")


class LiveReader:
    """A thread that reads one live source into a live job's ``Arrivals``: its sampled
    frames, decoded, each as an ``inputs.Loaded`` (see the module doc). ``realtime``
    paces a file at its own frame rate, as a camera would deliver it."""

    def __init__(self, source: str, arrivals, stop: threading.Event,
                 until: float | None = None) -> None:
        self.source, self.arrivals, self._stop, self.until = source, arrivals, stop, until
        self.fps: float | None = None
        self.max_pixels = io.DEFAULT_MAX_PIXELS
        self.pace = False  # a file read as a camera: at its frame rate (a stream paces itself)
        self.frames_read = 0
        self.thread = threading.Thread(target=self._run, name="zv-video", daemon=True)

    def configure(self, fps: float | None = None, max_pixels: int | None = None,
                  realtime: bool | None = None) -> None:
        self.fps = fps
        if max_pixels:
            self.max_pixels = max_pixels
        if realtime is not None:
            self.pace = realtime and not is_stream(self.source)

    def start(self) -> None:
        self.arrivals.producing()
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _over(self) -> bool:
        return (self._stop.is_set() or self.arrivals.closed
                or (self.until is not None and time.time() >= self.until))

    def _run(self) -> None:
        from zmqvision.inputs import Loaded

        frames = None
        try:
            frames = decode(self.source, self.fps, live=True)
            started = time.monotonic()
            for f in frames:
                if self.pace and self._stop.wait(max(0.0, started + f.time - time.monotonic())):
                    return
                if self._over():
                    return
                self.frames_read += 1
                loaded = Loaded(self.source, _frame_image(f, None, self.source,
                                                          self.max_pixels), None, None,
                                frame=f.index, frames=None, time=f.time, rereadable=False)
                if not self.arrivals.put(loaded):
                    return
        except io.ImageError as exc:
            self.arrivals.put(Loaded(self.source, None, {"type": exc.type,
                                                         "message": exc.message}))
        except Exception as exc:  # noqa: BLE001 - the job goes on with its other inputs
            log.error("%s: %s", self.source, exc)
            self.arrivals.put(Loaded(self.source, None, {"type": "unreadable",
                                                         "message": f"{self.source}: {exc}"}))
        finally:
            if frames is not None:
                frames.close()
            self.arrivals.produced()
