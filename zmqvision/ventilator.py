"""The ventilator: stream inputs, decode, tile, PUSH tiles; tell the sink what to expect.

Inputs are walked lazily and decoded a couple of images ahead on threads (Pillow releases
the GIL while decoding), so a million-file directory costs no more memory than two images.
Tiles are cut one at a time right before they are sent, and sent without a copy. The tiles
socket's high-water mark is small on purpose: when every worker is busy, sending blocks,
and that is the backpressure that keeps memory flat.

Completion is learned from the sink's PUB events (Progress snapshots and JobDone), which
also drive the progress bar.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import zmq

from zmqvision import io, protocol, sockets
from zmqvision.merge import MergeConfig
from zmqvision.tiling import cut_tile, plan_tiles

log = logging.getLogger("zmqvision.ventilator")


class JobFailed(RuntimeError):
    """The job could not be completed (no sink, timed out, interrupted)."""


@dataclass(frozen=True)
class VentilateConfig:
    inputs: tuple[str, ...]
    tiles: str = sockets.bind_endpoint(sockets.TILES_PORT)
    sink: str = sockets.connect_endpoint(sockets.RESULTS_PORT)
    events: str = sockets.connect_endpoint(sockets.EVENTS_PORT)
    model: str = "centerface"
    input_size: tuple[int, int] | None = None
    tile_size: tuple[int, int] | None = None  # None: the model's input size
    overlap: float = 0.2
    full_pass: bool = False
    merge: MergeConfig = field(default_factory=MergeConfig)
    score_threshold: float | None = None
    max_pixels: int = io.DEFAULT_MAX_PIXELS
    extensions: frozenset[str] | None = None
    recursive: bool = True
    decode_threads: int = 2
    read_ahead: int = 2
    timeout: float | None = None  # give up if the job is not complete after this long
    job_id: str | None = None


@dataclass
class _Loaded:
    path: str
    image: io.LoadedImage | None
    error: dict | None


def _load(path: str, max_pixels: int) -> _Loaded:
    try:
        return _Loaded(path, io.read_image(path, max_pixels=max_pixels), None)
    except io.ImageError as exc:
        return _Loaded(path, None, {"type": exc.type, "message": exc.message})
    except Exception as exc:  # an image must never take the job down
        return _Loaded(path, None, {"type": "unreadable", "message": f"{path}: {exc}"})


def _read_ahead(
    paths: Iterable[str], pool: ThreadPoolExecutor, depth: int, max_pixels: int
) -> Iterator[_Loaded]:
    """Decode up to ``depth`` images ahead, yielding them in input order."""
    pending: deque[Future] = deque()
    for path in paths:
        pending.append(pool.submit(_load, path, max_pixels))
        if len(pending) > depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class Ventilator:
    """Binds the tiles socket first (so workers can connect), then runs one job."""

    def __init__(self, config: VentilateConfig) -> None:
        from zmqvision.models import resolve

        self.config = config
        spec = resolve(config.model)
        if config.input_size is not None:
            spec = spec.with_input_size(*config.input_size)
        self.spec = spec
        self.tile_size = config.tile_size or spec.input_size
        self.job_id = config.job_id or protocol.new_job_id()
        self.ctx = zmq.Context()
        self.tiles = sockets.make_socket(self.ctx, zmq.PUSH, sndhwm=4, linger=2000)
        self.to_sink = sockets.make_socket(self.ctx, zmq.PUSH, sndhwm=100_000, linger=5000)
        self.events = sockets.make_socket(self.ctx, zmq.SUB, rcvhwm=10_000)
        self.tiles_endpoint: str | None = None
        self.last_sink_heard: float | None = None
        self.bad = sockets.BadMessages("ventilator")
        self.done: protocol.JobDone | None = None

    def bind(self) -> str:
        self.tiles_endpoint = sockets.bind(self.tiles, self.config.tiles)
        return self.tiles_endpoint

    def close(self) -> None:
        self.tiles.close()
        self.to_sink.close()
        self.events.close(linger=0)
        self.ctx.term()

    # ------------------------------------------------------------------ events

    def _drain_events(self, on_progress: Callable[[protocol.Progress], None] | None) -> None:
        while True:
            try:
                frames = self.events.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                self.bad(exc)
                continue
            self.last_sink_heard = time.monotonic()
            if isinstance(msg, protocol.Progress) and msg.job == self.job_id:
                if on_progress is not None:
                    on_progress(msg)
            elif isinstance(msg, protocol.JobDone) and msg.job == self.job_id:
                self.done = msg

    # ------------------------------------------------------------------ the job

    def run(
        self,
        stop: sockets.StopFlag | None = None,
        on_progress: Callable[[protocol.Progress], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
        watchdog: Callable[[], None] | None = None,
    ) -> protocol.JobDone:
        """Send the whole job and wait for the sink's JobDone; raises JobFailed.

        ``watchdog`` is called while waiting and may raise JobFailed (``run`` uses it to
        notice that its child processes died)."""
        cfg = self.config
        stop = stop or sockets.StopFlag()
        if self.tiles_endpoint is None:
            self.bind()
        for topic in (protocol.MsgType.PROGRESS, protocol.MsgType.JOB_DONE,
                      protocol.MsgType.SINK_STATUS):
            self.events.setsockopt(zmq.SUBSCRIBE, topic.tag)
        self.events.connect(cfg.events)
        self.to_sink.connect(cfg.sink)
        started = time.monotonic()

        def pump() -> None:
            self._drain_events(on_progress)
            if watchdog is not None:
                watchdog()
            if cfg.timeout is not None and time.monotonic() - started > cfg.timeout:
                raise JobFailed(f"job {self.job_id} not complete after {cfg.timeout:.0f} s")

        def to_sink(msg) -> None:
            if not sockets.send_blocking(self.to_sink, protocol.encode(msg), stop,
                                         while_waiting=pump):
                raise JobFailed("interrupted")

        to_sink(protocol.JobStart(
            job=self.job_id,
            model=self.spec.describe(),
            tiling={"tile_size": list(self.tile_size), "overlap": cfg.overlap,
                    "full_pass": cfg.full_pass, "input_size": list(self.spec.input_size)},
            merge={"method": cfg.merge.method, "metric": cfg.merge.metric,
                   "threshold": cfg.merge.threshold,
                   "class_agnostic": cfg.merge.class_agnostic},
            options={"score_threshold": cfg.score_threshold},
        ))
        n_images = n_tiles = 0
        seen: set[str] = set()
        paths = io.iter_image_paths(cfg.inputs, recursive=cfg.recursive,
                                    extensions=cfg.extensions)
        with ThreadPoolExecutor(max(1, cfg.decode_threads), "zv-decode") as pool:
            for loaded in _read_ahead(paths, pool, cfg.read_ahead, cfg.max_pixels):
                if stop.is_set():
                    raise JobFailed("interrupted")
                img = loaded.image
                iid = (protocol.image_id(img.content_hash, loaded.path) if img is not None
                       else protocol.failed_image_id(loaded.path))
                if iid in seen:
                    log.info("skipping %s: already in this job", loaded.path)
                    continue
                seen.add(iid)
                if img is None:
                    to_sink(protocol.ImageInfo(job=self.job_id, image=iid, path=loaded.path,
                                               seq=n_images, abspath=os.path.abspath(loaded.path),
                                               error=loaded.error))
                    n_images += 1
                    continue
                plan = plan_tiles(img.width, img.height, self.tile_size, cfg.overlap,
                                  cfg.full_pass)
                to_sink(protocol.ImageInfo(
                    job=self.job_id, image=iid, path=loaded.path, seq=n_images,
                    width=img.width, height=img.height, tiles=len(plan),
                    hash=img.content_hash, abspath=os.path.abspath(loaded.path),
                ))
                n_images += 1
                for tile in plan:
                    pixels, scale = cut_tile(img.pixels, tile, self.spec.input_size)
                    msg = protocol.Tile(job=self.job_id, image=iid, index=tile.index,
                                        box=tile.box, scale=scale, model=self.spec.ref,
                                        pixels=pixels, min_score=cfg.score_threshold)
                    if not sockets.send_blocking(self.tiles, protocol.encode(msg), stop,
                                                 copy=False, while_waiting=pump):
                        raise JobFailed("interrupted")
                    n_tiles += 1
                self._drain_events(on_progress)
        to_sink(protocol.JobEnd(job=self.job_id, images=n_images, tiles=n_tiles))
        warned = False
        while self.done is None:
            if stop.is_set():
                raise JobFailed("interrupted")
            if self.events.poll(100, zmq.POLLIN):
                pump()
            else:
                pump()
                quiet = time.monotonic() - (self.last_sink_heard or started)
                if quiet > 5 and not warned and on_wait is not None:
                    on_wait(f"no word from the sink at {cfg.events} for {quiet:.0f} s; waiting")
                    warned = True
        return self.done


def ventilate(
    config: VentilateConfig,
    stop: sockets.StopFlag | None = None,
    on_progress: Callable[[protocol.Progress], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> protocol.JobDone:
    """Run one job against an already running sink and workers."""
    vent = Ventilator(config)
    try:
        return vent.run(stop, on_progress, on_wait)
    finally:
        vent.close()
