"""The ventilator: stream inputs, decode, tile, hand tiles to workers that ask for them;
tell the sink what to expect; send again whatever was lost.

Inputs are walked lazily and decoded a couple of images ahead on threads (Pillow releases
the GIL while decoding). At most ``window`` images are in flight: announced to the sink and
not yet acknowledged as written. Their decoded pixels are kept only while some of their
tiles have not been sent; a tile that must be sent again later (its worker died) is cut
from the file read anew. Memory is therefore bounded by the window, whatever the job size.

Workers connect DEALER sockets to this ROUTER and ask for tiles with credit (``Ready``);
see ``zmqvision.dispatch`` for leases, dead workers and backup tasks, and docs/reliability.md
for the whole design. The sink acknowledges tiles and written images on its PUB socket;
when the sink restarts (a new sink id), the job is announced to it again and every image
not yet written is sent again, which the sink's journal turns into exactly one record per
image.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import zmq

from zmqvision import io, protocol, results, security, sockets
from zmqvision.cache import Entry, job_fingerprint, open_cache
from zmqvision.cache.entry import attach_path
from zmqvision.dispatch import Dispatcher, TileKey
from zmqvision.idset import IdSet
from zmqvision.merge import MergeConfig
from zmqvision.scales import resolve_scales, scales_json
from zmqvision.tiling import Tile, cut_tile, draft_reducer, plan_scales

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
    # More cut sizes in one job: (w, h), "native" or "full" (see zmqvision.scales).
    scales: tuple[tuple[int, int] | str, ...] | None = None
    min_size: float | None = None  # smallest object in source px: plans the cut
    merge: MergeConfig = field(default_factory=MergeConfig)
    score_threshold: float | None = None
    max_pixels: int = io.DEFAULT_MAX_PIXELS
    extensions: frozenset[str] | None = None
    recursive: bool = True
    decode_threads: int = 2
    read_ahead: int = 2
    window: int = 256  # images in flight (announced, not yet written by the sink)
    wire: str = "auto"  # tile encoding: "raw", "jpeg", or "auto" (raw to local workers only)
    # Decode a JPEG at 1/2, 1/4 or 1/8 when every tile of it shrinks at least that much.
    jpeg_draft: bool = True
    lease_s: float = 120.0  # a tile unanswered this long is sent again
    timeout: float | None = None  # give up if the job is not complete after this long
    job_id: str | None = None
    resume: str | None = None  # a results file: skip the images it already has
    cache: str | None = "auto"  # result cache URL; "auto": $ZMQVISION_RESULTS_CACHE or SQLite
    curve: str | None = None  # key directory: CURVE on every socket (security.py)

    def input_paths(self) -> Iterator[str]:
        """The job's image files, walked lazily, in the order they are sent."""
        return io.iter_image_paths(self.inputs, recursive=self.recursive,
                                   extensions=self.extensions)


@dataclass
class _Loaded:
    path: str
    image: io.LoadedImage | None
    error: dict | None
    hash: str | None = None  # content hash, whenever the bytes could be read
    hit: Entry | None = None  # the result cache had this image's result: not decoded


Lookup = Callable[[str], "Entry | None"]
Reduce = Callable[[int, int], int]


def _load(path: str, max_pixels: int, lookup: Lookup | None = None,
          reduce: Reduce | None = None) -> _Loaded:
    """Read the file once; hash the bytes; look the result up (a hit is not decoded);
    decode the same bytes otherwise."""
    digest = None
    try:
        data = io.read_file(path)
        digest = io.content_hash(data) if data else None
        if lookup is not None and digest is not None:
            hit = lookup(digest)
            if hit is not None:
                return _Loaded(path, None, attach_path(hit.error, path), digest, hit)
        image = io.decode_image(data, max_pixels=max_pixels, name=path, digest=digest,
                                reduce=reduce)
        return _Loaded(path, image, None, digest)
    except io.ImageError as exc:
        return _Loaded(path, None, {"type": exc.type, "message": exc.message}, digest)
    except Exception as exc:  # an image must never take the job down
        return _Loaded(path, None, {"type": "unreadable", "message": f"{path}: {exc}"}, digest)


class _ReadAhead:
    """Read and decode up to ``depth`` images ahead on a thread pool, in input order.

    It starts at once: ``Ventilator.prefetch`` builds it while the workers start (loading
    a model takes longer than decoding the first images), so the first tiles are cut by
    the time a worker asks for them."""

    def __init__(self, paths: Iterable[str], threads: int, depth: int, max_pixels: int,
                 lookup: Lookup | None = None, reduce: Reduce | None = None) -> None:
        self._paths = iter(paths)
        self._pool = ThreadPoolExecutor(max(1, threads), "zv-decode")
        self._pending: deque[Future] = deque()
        self._depth, self._max_pixels, self._lookup = depth, max_pixels, lookup
        self._reduce = reduce
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) <= self._depth:
            path = next(self._paths, None)
            if path is None:
                return
            self._pending.append(self._pool.submit(_load, path, self._max_pixels,
                                                   self._lookup, self._reduce))

    def next(self) -> _Loaded | None:
        """The next input, loaded; None when there are no more."""
        if not self._pending:
            return None
        loaded = self._pending.popleft().result()
        self._fill()
        return loaded

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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


@dataclass
class _InFlight:
    """An image announced to the sink whose record is not written yet."""

    info: protocol.ImageInfo
    plan: list[Tile]
    pixels: np.ndarray | None  # dropped once every tile has been sent at least once
    next_tile: int = 0
    reduced: int = 1  # the pixels are at 1/reduced of the image's size (a JPEG draft)

    @property
    def all_sent(self) -> bool:
        return self.next_tile >= len(self.plan)


def peer_address(frame: zmq.Frame) -> str:
    """The address ZeroMQ reports a message came from; "" where it has none (ipc,
    inproc, or a frame that no longer knows its connection)."""
    try:
        return frame.get("Peer-Address") or ""
    except zmq.ZMQError:
        return ""


def is_local_peer(frame: zmq.Frame, endpoint: str | None) -> bool:
    """Whether a message came from this host: over ipc or inproc, or over tcp from a
    loopback address (what ZeroMQ reports as the frame's Peer-Address)."""
    if endpoint is None or not endpoint.startswith("tcp://"):
        return True
    addr = peer_address(frame)
    return addr in ("", "::1", "localhost") or addr.startswith(("127.", "::ffff:127."))


class Ventilator:
    """Binds the tiles socket first (so workers can connect), then runs one job."""

    def __init__(self, config: VentilateConfig, ctx: zmq.Context | None = None) -> None:
        from zmqvision.models import resolve

        self.config = config
        self.spec = spec = resolve(config.model, config.input_size)
        self.scales = resolve_scales(spec, tile_size=config.tile_size, scales=config.scales,
                                     min_size=config.min_size, full_pass=config.full_pass)
        self.tile_size = next((s for s in self.scales if s is not None), spec.input_size)
        self._own_ctx = ctx is None  # a shared one (inproc to threads) is the caller's
        self.ctx = ctx if ctx is not None else zmq.Context()
        self.router = sockets.make_socket(self.ctx, zmq.ROUTER, sndhwm=1000, linger=2000,
                                          maxmsgsize=1 << 20)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.to_sink = sockets.make_socket(self.ctx, zmq.PUSH, sndhwm=100_000, linger=5000)
        self.events = sockets.make_socket(self.ctx, zmq.SUB, rcvhwm=100_000)
        try:
            self.secured = security.secure(self.ctx, config.curve, servers=(self.router,),
                                        clients=(self.to_sink, self.events))
        except security.CurveKeyError:
            for sock in (self.router, self.to_sink, self.events):
                sock.close(linger=0)
            if self._own_ctx:
                self.ctx.term()
            raise
        self.tiles_endpoint: str | None = None
        self.last_sink_heard: float | None = None
        self.sink_id: str | None = None
        self.bad = sockets.BadMessages("ventilator")
        self.done: protocol.JobDone | None = None
        self.dispatch = Dispatcher(lease_s=config.lease_s)
        self.window: OrderedDict[str, _InFlight] = OrderedDict()
        # Images of the window with tiles never sent yet, oldest first (keeps choosing the
        # next tile O(1) however large the window).
        self._unsent: deque[str] = deque()
        self._reread_cache: tuple[str, np.ndarray] | None = None
        if config.wire not in ("auto", *protocol.TILE_ENCODINGS):
            raise ValueError(f"unknown wire encoding {config.wire!r}")
        self.skipped = 0
        self.tiles_sent = 0  # every send, copies included
        self.rereads = 0  # images decoded again to cut tiles that had to be sent again
        self.reduced = 0  # JPEGs decoded at 1/2, 1/4 or 1/8 (every tile shrinks that much)
        self.cached = 0  # images answered from the result cache (never decoded or tiled)
        self.cache = open_cache(config.cache)
        # Called once, when the first image that needs tiles is admitted (run starts its
        # workers there when the job began with cached images).
        self.on_first_tiles: Callable[[], None] | None = None
        self._reader: _ReadAhead | None = None  # started by prefetch() or run()
        resumed_job, self._already = (read_resume(config.resume) if config.resume
                                      else (None, IdSet()))
        self.job_id = config.job_id or resumed_job or protocol.new_job_id()

    def bind(self) -> str:
        self.tiles_endpoint = sockets.bind(self.router, self.config.tiles)
        return self.tiles_endpoint

    def prefetch(self) -> None:
        """Start reading and decoding the first inputs now, before ``run``: ``zmqvision
        run`` calls it while its workers load the model, which is otherwise idle time."""
        if self._reader is None:
            cfg = self.config
            self._reader = _ReadAhead(cfg.input_paths(), cfg.decode_threads, cfg.read_ahead,
                                      cfg.max_pixels, self._cache_lookup(), self._reduce())

    def first_input_cached(self) -> bool:
        """Whether the job's first input has a result in the cache, looked up before
        anything else starts: ``run`` then leaves the workers (and their model) for the
        first image that needs tiles, and a run whose images are all cached starts none."""
        lookup = self._cache_lookup()
        if lookup is None:
            return False
        path = next(self.config.input_paths(), None)
        if path is None:
            return False
        try:
            digest = io.content_hash(io.read_file(path))
        except io.ImageError:
            return False
        return lookup(digest) is not None

    def _reduce(self) -> Reduce | None:
        """How far a JPEG of a given size may be reduced as it is decoded: by the factor
        every one of its tiles shrinks anyway (``tiling.draft_factor``)."""
        if not self.config.jpeg_draft:
            return None
        return draft_reducer(self.scales, self.config.overlap, self.spec.input_size)

    def _cache_lookup(self) -> Lookup | None:
        """The result cache's lookup under this job's settings; None without a cache."""
        if self.cache is None:
            return None
        settings, cache, ref = job_fingerprint(self.job_start_message()), self.cache, self.spec.ref
        return lambda content_hash: cache.lookup(settings, content_hash, ref)

    def job_start_message(self) -> protocol.JobStart:
        """The job's ``zv.job``: everything that shapes its results (the cache key and
        every record's ``settings`` come from it)."""
        cfg = self.config
        return protocol.JobStart(
            job=self.job_id,
            model=self.spec.describe(),
            tiling={"tile_size": list(self.tile_size), "overlap": cfg.overlap,
                    "full_pass": None in self.scales,
                    "input_size": list(self.spec.input_size),
                    "scales": scales_json(self.scales), "min_size": cfg.min_size,
                    "jpeg_draft": cfg.jpeg_draft},
            merge={"method": cfg.merge.method, "metric": cfg.merge.metric,
                   "threshold": cfg.merge.threshold,
                   "class_agnostic": cfg.merge.class_agnostic},
            options={"score_threshold": cfg.score_threshold},
        )

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.secured is not None:
            self.secured.close()
        self.router.close()
        self.to_sink.close()
        self.events.close(linger=0)
        if self._own_ctx:
            self.ctx.term()
        if self.cache is not None:
            self.cache.close()

    # ------------------------------------------------------------------ workers

    def _from_workers(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            wid, body = frames[0].bytes, frames[1:]
            try:
                msg = protocol.decode(body, (protocol.MsgType.READY, protocol.MsgType.HEARTBEAT,
                                             protocol.MsgType.BYE))
            except protocol.ProtocolError as exc:
                self.bad(exc)
                continue
            if isinstance(msg, protocol.Ready):
                self.dispatch.ready(wid, msg.credit)
            elif isinstance(msg, protocol.Heartbeat):
                free = max(0, msg.requests - msg.in_flight - msg.queue)
                self.dispatch.heard(wid, period=msg.period, free=free,
                                    held=msg.in_flight + msg.queue)
            elif isinstance(msg, protocol.Bye):
                self.dispatch.bye(wid)
            slot = self.dispatch.workers.get(wid)
            if slot is not None and slot.encoding is None:  # its first message
                slot.encoding = self._choose_encoding(frames[0])
                log.info("worker %s (%s): tiles as %s", wid.decode(errors="replace"),
                         peer_address(frames[0]) or "local", slot.encoding)

    def _choose_encoding(self, frame: zmq.Frame) -> str:
        if self.config.wire != "auto":
            return self.config.wire
        return "raw" if is_local_peer(frame, self.tiles_endpoint) else "jpeg"

    def _send_tile(self, wid: bytes, key: TileKey, copy: bool) -> bool:
        entry = self.window.get(key[0])
        if entry is None:
            return False  # written meanwhile
        pixels = entry.pixels
        if pixels is None:
            pixels = self._reread(key[0], entry)
            if pixels is None:
                return False
        tile = entry.plan[key[1]]
        cut, scale = cut_tile(pixels, tile, self.spec.input_size, entry.reduced)
        if entry.all_sent:
            entry.pixels = None  # every tile has been cut once: the pixels can go
        msg = protocol.Tile(job=self.job_id, image=key[0], index=key[1], box=tile.box,
                            scale=scale, model=self.spec.ref, pixels=cut,
                            min_score=self.config.score_threshold, attempt=int(copy),
                            encoding=self.dispatch.workers[wid].encoding or "raw")
        try:
            self.router.send_multipart([wid, *protocol.encode(msg)], flags=zmq.NOBLOCK,
                                       copy=False)
        except zmq.ZMQError:  # EHOSTUNREACH: the worker is gone; EAGAIN: its pipe is full
            self.dispatch.lost(wid)
            self.dispatch.resend.appendleft(key)
            return False
        self.dispatch.assign(key, wid)
        self.tiles_sent += 1
        if copy:
            self.dispatch.note_backup()
        return True

    def _reread(self, image: str, entry: _InFlight) -> np.ndarray | None:
        """Pixels of an image whose tiles must be sent again, read anew from its file (one
        image is cached: re-sent tiles of one image tend to come together)."""
        if self._reread_cache is not None and self._reread_cache[0] == image:
            return self._reread_cache[1]
        self.rereads += 1
        loaded = _load(entry.info.path, self.config.max_pixels, reduce=self._reduce())
        if loaded.image is None or loaded.image.content_hash != entry.info.hash:
            log.error("%s changed or vanished during the job; it cannot be sent again",
                      entry.info.path)
            return None
        entry.reduced = loaded.image.reduced  # the same file and plan: the same factor
        self._reread_cache = (image, loaded.image.pixels)
        return loaded.image.pixels

    def _has_unsent(self) -> bool:
        """Whether some image of the window still has tiles never sent (dropping images
        written meanwhile, e.g. acked by a restarted sink that already had them)."""
        while self._unsent:
            entry = self.window.get(self._unsent[0])
            if entry is not None and not entry.all_sent:
                return True
            self._unsent.popleft()
        return False

    def _next_key(self, wid: bytes) -> tuple[TileKey, bool] | None:
        d = self.dispatch
        while d.resend:
            key = d.resend.popleft()
            if key[0] in self.window and not d.is_leased(key):
                return key, False
        if self._has_unsent():
            image = self._unsent[0]
            entry = self.window[image]
            index = entry.next_tile
            entry.next_tile += 1
            if entry.all_sent:
                self._unsent.popleft()
            return (image, index), False
        if self._exhausted:
            key = d.backup_candidate(wid)
            if key is not None:
                return key, True
        return None

    def _dispatch(self) -> None:
        d = self.dispatch
        while True:
            wid = d.pick_worker()
            if wid is None:
                return
            nxt = self._next_key(wid)
            if nxt is None:
                return
            self._send_tile(wid, *nxt)

    # ------------------------------------------------------------------ sink

    def _events(self, on_progress) -> None:
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
            if isinstance(msg, protocol.Ack) and msg.job == self.job_id:
                # The first word from a sink may be an ack, before its first status: adopt
                # its id then (dropping those acks stalled fast jobs until leases ran out).
                if self.sink_id is None:
                    self.sink_id = msg.sink
                elif msg.sink != self.sink_id:
                    self._sink_restarted(msg.sink)
                    self.sink_id = msg.sink
                for key in msg.tiles:
                    self.dispatch.done(key)
                for image in msg.images:
                    self.dispatch.forget_image(image)
                    self.window.pop(image, None)
                    if self._reread_cache is not None and self._reread_cache[0] == image:
                        self._reread_cache = None
            elif isinstance(msg, protocol.SinkStatus):
                if self.sink_id is not None and msg.sink != self.sink_id:
                    self._sink_restarted(msg.sink)
                self.sink_id = msg.sink
            elif isinstance(msg, protocol.Progress) and msg.job == self.job_id:
                if on_progress is not None:
                    on_progress(msg)
            elif isinstance(msg, protocol.JobDone) and msg.job == self.job_id:
                self.done = msg

    def _sink_restarted(self, new_sink: str) -> None:
        """Announce the job again and send every unwritten image again: the new sink's
        journal knows which records exist and merges everything else once."""
        log.warning("the sink restarted (%s → %s): sending %d unfinished images again",
                    self.sink_id, new_sink, len(self.window))
        self._to_sink(self._job_start)
        for image, entry in self.window.items():
            self._to_sink(entry.info)
            self.dispatch.forget_image(image)
            entry.next_tile = 0
            entry.pixels = None  # re-read on demand
        self._unsent = deque(self.window)
        if self._job_end is not None:
            self._to_sink(self._job_end)

    def _to_sink(self, msg) -> None:
        if not sockets.send_blocking(self.to_sink, protocol.encode(msg), self._stop,
                                     while_waiting=self._pump):
            raise JobFailed("interrupted")

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
        self._stop = stop = stop or sockets.StopFlag()
        if self.tiles_endpoint is None:
            self.bind()
        for topic in (protocol.MsgType.PROGRESS, protocol.MsgType.JOB_DONE,
                      protocol.MsgType.SINK_STATUS, protocol.MsgType.ACK):
            self.events.setsockopt(zmq.SUBSCRIBE, topic.tag)
        self.events.connect(cfg.events)
        self.to_sink.connect(cfg.sink)
        started = time.monotonic()
        self._exhausted = False
        self._job_end: protocol.JobEnd | None = None
        warned = False
        next_housekeeping = 0.0

        def pump() -> None:
            nonlocal warned, next_housekeeping
            self._from_workers()
            self._events(on_progress)
            now = time.monotonic()
            if now < next_housekeeping:  # leases and liveness change on a scale of seconds
                return
            next_housekeeping = now + 0.1
            self.dispatch.expire()
            if watchdog is not None:
                watchdog()
            if cfg.timeout is not None and now - started > cfg.timeout:
                raise JobFailed(f"job {self.job_id} not complete after {cfg.timeout:.0f} s")
            quiet = now - (self.last_sink_heard or started)
            if quiet > 5 and not warned and on_wait is not None:
                on_wait(f"no word from the sink at {cfg.events} for {quiet:.0f} s; waiting")
                warned = True

        self._pump = pump
        self._job_start = self.job_start_message()
        self._to_sink(self._job_start)
        n_images = n_tiles = 0
        seen = IdSet()  # ids of the images admitted: the same input twice is one image
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        self.prefetch()
        source = self._reader
        try:
            while self.done is None:
                if stop.is_set():
                    raise JobFailed("interrupted")
                pump()
                # Admit images while the window has room and the workers could use tiles.
                while (not self._exhausted and len(self.window) < cfg.window
                       and not self._has_unsent()):
                    loaded = source.next()
                    if loaded is None:
                        self._exhausted = True
                        break
                    added = self._admit(loaded, n_images, seen)
                    if added is not None:
                        n_images += 1
                        n_tiles += added
                if self._exhausted and self._job_end is None:
                    self._job_end = protocol.JobEnd(job=self.job_id, images=n_images,
                                                    tiles=n_tiles)
                    self._to_sink(self._job_end)
                self._dispatch()
                poller.poll(20 if self.dispatch.total_credit() else 100)
        finally:
            source.close()
            self._reader = None
        d = self.dispatch
        log.info("job %s: %d images, %d tiles sent (%d again after a lost worker or lease, "
                 "%d backup copies), %d images re-read to cut them, %d answered from the "
                 "result cache, %d decoded at reduced size", self.job_id, n_images,
                 self.tiles_sent, d.requeued, d.backups_sent, self.rereads, self.cached,
                 self.reduced)
        return self.done

    def _admit(self, loaded: _Loaded, seq: int, seen: IdSet) -> int | None:
        """Announce one image and queue its tiles; None if it is not part of the job."""
        img, hit = loaded.image, loaded.hit
        ok = img is not None or (hit is not None and hit.error is None)
        iid = (protocol.image_id(loaded.hash, loaded.path) if ok
               else protocol.failed_image_id(loaded.path))
        if iid in seen:
            log.info("skipping %s: already in this job", loaded.path)
            return None
        seen.add(iid)
        abspath = os.path.abspath(loaded.path)
        if iid in self._already:
            self.skipped += 1  # resumed: its record exists; the sink counts it from there
            return 0
        if hit is not None:
            self._admit_cached(loaded, hit, iid, seq, abspath)
            return 0
        if img is None:
            self._to_sink(protocol.ImageInfo(job=self.job_id, image=iid, path=loaded.path,
                                             seq=seq, abspath=abspath, error=loaded.error,
                                             hash=loaded.hash))
            return 0
        plan = plan_scales(img.width, img.height, self.scales, self.config.overlap)
        self.reduced += img.reduced > 1
        if self.on_first_tiles is not None:  # the first image that needs a worker
            hook, self.on_first_tiles = self.on_first_tiles, None
            hook()
        info = protocol.ImageInfo(job=self.job_id, image=iid, path=loaded.path, seq=seq,
                                  width=img.width, height=img.height, tiles=len(plan),
                                  hash=img.content_hash, abspath=abspath)
        self._to_sink(info)
        self.window[iid] = _InFlight(info, plan, img.pixels, reduced=img.reduced)
        self._unsent.append(iid)
        return len(plan)


    def _admit_cached(self, loaded: _Loaded, hit: Entry, iid: str, seq: int,
                      abspath: str) -> None:
        """Announce an image with its cached result. It stays in the window (no tiles)
        until the sink acks its record, so a restarted sink is told it again."""
        info = protocol.ImageInfo(
            job=self.job_id, image=iid, path=loaded.path, seq=seq, width=hit.width,
            height=hit.height, tiles=0, hash=loaded.hash, abspath=abspath, error=loaded.error,
            cached=protocol.Cached(tiles=hit.tiles, detections=hit.detections,
                                   created=hit.created))
        self._to_sink(info)
        self.window[iid] = _InFlight(info, [], None)
        self.cached += 1


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
