"""The ventilator's engine: many jobs over one set of workers and one sink.

One loop, in one thread, owns the sockets (``links``) and the in-flight images (``Window``).
Each pass it takes calls from other threads (a Pool's submissions, cancellations), hears
the workers and the sink, expires silent workers and late requests, admits images of each
job while that job's window has room and it has no tile waiting, and hands tiles to the
workers with credit, taking the jobs in turn (round-robin), so a one-image request does
not wait behind a 10,000-image job. Tiles go by model: each model the jobs need (a
two-stage job's crops first, then stage-1 tiles) is offered to the workers that serve it
(``Dispatcher.pick_worker(model)``); tiles of a model no worker serves wait, and
``unserved`` says since when (the Pool tells the user how to start such a worker).

Every image the engine announces stays in the window until the sink acknowledges its
record; its pixels are kept only while some tile has not been sent (a file's tile that must
go again is cut from the file read anew; a caller's in-memory image keeps its pixels), or,
for a two-stage job, until its crops are cut, within ``STAGE2_PIXELS_BYTES``. When
the sink restarts (a new sink id), every job is announced to it again with every image not
yet written, and the new sink's journal turns that into exactly one record per image.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import zmq

from zmqvision import protocol, security, sockets
from zmqvision.boxes import Detections
from zmqvision.dispatch import IMAGE, TileKey
from zmqvision.inputs import Loaded, load_frame
from zmqvision.jobs import RESUMED, SKIP, FileJob, Job, Request
from zmqvision.links import SinkLink, WorkerLink
from zmqvision.tasks import stage2 as tasks_stage2
from zmqvision.tiling import Tile

log = logging.getLogger("zmqvision.ventilator")

HOUSEKEEPING_S = 0.1
MAX_RECORD_RESENDS = 3  # leases, liveness and deadlines change on a scale of seconds
# ``--wire auto`` sends a remote worker an image whole when its file is at most this many
# bytes per tile (a JPEG photo: ~60-100 KiB), and JPEG tiles (~136 KiB each at 640²,
# quality 95) otherwise: a PNG or TIFF would cost the link more than the tiles do.
AUTO_IMAGE_BYTES_PER_TILE = 192 << 10
# A two-stage job's image keeps its decoded pixels from its stage-1 tiles until its crops
# are cut (the sink's ``zv.objects``), so that cutting them costs no second read and
# decode of its file (a PNG decode per image: docs/recognition.md, "Measured"). At most
# this many bytes are held so at once (all jobs together: 256 MiB is ~7 images of
# 4000 x 3000, ~110 of 1024 x 768); an image past it drops its pixels as a one-stage
# job's does, and its crops are cut from its file read again (``Engine.crop_rereads``).
STAGE2_PIXELS_BYTES = 256 << 20


def encode_threads() -> int:
    """Threads that cut and JPEG-encode tiles for remote workers: the cores this process
    may run on, or ``$ZMQVISION_ENCODE_THREADS`` (1: in the loop's thread, as before)."""
    env = os.environ.get("ZMQVISION_ENCODE_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class JobFailed(RuntimeError):
    """The job could not be completed (no sink, timed out, interrupted)."""


class RequestTimeout(TimeoutError):
    """A request's deadline passed before its record came; its tiles were withdrawn."""


@dataclass(eq=False)
class InFlight:
    """An image announced to the sink whose record is not written yet."""

    job: Job
    info: protocol.ImageInfo
    plan: list[Tile]
    pixels: np.ndarray | None  # dropped once every tile has been sent (files only)
    reduced: int = 1  # the pixels are at 1/reduced of the image's size (a JPEG draft)
    request: Request | None = None
    next_tile: int = 0
    sends: bytearray = field(default_factory=bytearray)  # per tile: times sent (capped)
    broken: dict | None = None  # its file changed or vanished: remaining tiles fail
    keep: bool = False  # a live stream's frame: it cannot be read again
    data: bytes | None = None  # the file's bytes while it may go whole (--wire image)
    whole: bool = False  # it may be sent whole to a worker that takes images
    # A two-stage job's image whose stage 1 the sink has merged (protocol.Objects): each
    # object's crop, cut from the original pixels, is stage-2 tile len(plan) + i. Kept
    # until the record is written (a crop whose worker died goes again); small (a face
    # is 37 KB).
    objects: Detections | None = None
    crops: list[np.ndarray] | None = None
    # Bytes of ``pixels`` held for its crops past its last stage-1 tile (counted in
    # ``Engine.held_bytes``, given back once the crops are cut or the image leaves).
    held: int = 0

    @property
    def tile_count(self) -> int:
        """Its tiles to send: stage 1's, and the crops of stage 2 once they are cut."""
        return len(self.plan) + (len(self.crops) if self.crops is not None else 0)

    @property
    def all_sent(self) -> bool:
        return self.next_tile >= self.tile_count

    @property
    def keeps_pixels(self) -> bool:
        return self.request is not None or self.keep  # nothing to read again


def window_key(job: str, image: str) -> str:
    """The engine's name for an image: its id within its job (two jobs may share ids)."""
    return f"{job}/{image}"


class Engine:
    """Binds the tiles socket, connects to the sink, runs jobs; see the module doc."""

    def __init__(self, *, ctx: zmq.Context | None = None, wire: str = "auto",
                 lease_s: float = 120.0, curve: str | None = None,
                 stop: sockets.StopFlag | None = None,
                 stage2_pixels_bytes: int = STAGE2_PIXELS_BYTES) -> None:
        self._own_ctx = ctx is None  # a shared one (inproc to threads) is the caller's
        self.ctx = ctx if ctx is not None else zmq.Context()
        self.bad = sockets.BadMessages("ventilator")
        self.workers = self.sink = None
        try:
            self.workers = WorkerLink(self.ctx, wire=wire, lease_s=lease_s, bad=self.bad)
            self.sink = SinkLink(self.ctx, bad=self.bad)
            self.secured = security.secure(
                self.ctx, curve, servers=((self.workers.router, (security.WORKER,)),),
                clients=(self.sink.push, self.sink.events))
        except BaseException:
            self._close_sockets()
            raise
        self.dispatch = self.workers.dispatch
        self.stop = stop or sockets.StopFlag()  # ends a send that waits for the sink
        self.wake = sockets.WakePipe(self.stop)
        self.poller = zmq.Poller()
        self.poller.register(self.workers.router, zmq.POLLIN)
        self.poller.register(self.sink.events, zmq.POLLIN)
        self.poller.register(self.wake.r, zmq.POLLIN)
        self.jobs: dict[str, Job] = {}
        # The models the jobs' tiles need, each once, a second stage's before its first's
        # (an image whose crops go first is written sooner); kept with ``jobs``.
        self._models: tuple[str, ...] = ()
        # Model → (since when its tiles wait with no worker serving it, the worker flags
        # that would serve it): read by the Pool's thread for its notice.
        self.unserved: dict[str, tuple[float, str]] = {}
        self.window: dict[str, InFlight] = {}
        self._turn = 0  # round-robin position among jobs
        self._calls: deque[Callable[[], None]] = deque()  # from other threads
        self._deadlines: list[tuple[float, int, Request]] = []
        self._reread_cache: tuple[str, np.ndarray] | None = None
        self._next_housekeeping = 0.0
        # JPEG tiles are cut and encoded on this many threads (Pillow releases the GIL),
        # leased in the order picked and sent in that order once a batch is encoded.
        self.encode_threads = encode_threads()
        self._encoder: ThreadPoolExecutor | None = None
        self.rereads = 0  # images decoded again to cut tiles that had to be sent again
        # Two-stage jobs: the pixels held for crops (bytes, now) and the budget they may
        # not pass (STAGE2_PIXELS_BYTES); images whose crops were cut from a re-read file
        # because their pixels did not fit (or were dropped by a sink restart).
        self.stage2_pixels_bytes = stage2_pixels_bytes
        self.held_bytes = 0
        self.crop_rereads = 0
        # Called once, when the first image that needs tiles is admitted (run starts its
        # workers there when the job began with cached images).
        self.on_first_tiles: Callable[[], None] | None = None

    # ------------------------------------------------------------------ set-up

    def bind(self, tiles: str) -> str:
        return self.workers.bind(tiles)

    def connect(self, sink: str, events: str) -> None:
        self.sink.connect(sink, events)

    def _close_sockets(self) -> None:
        for link in (self.workers, self.sink):
            if link is not None:
                link.close()

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.shutdown(wait=True)
        for job in self.jobs.values():
            job.close()
        if self.secured is not None:
            self.secured.close()
        self._close_sockets()
        self.wake.close()
        if self._own_ctx:
            self.ctx.term()

    # ------------------------------------------------------------------ other threads

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the engine's thread at its next pass (thread-safe)."""
        self._calls.append(fn)
        self.wake.wake()

    # ------------------------------------------------------------------ jobs

    def add_job(self, job: Job) -> bool:
        """Announce a job to the sink; False if stopped before it could be sent."""
        self.jobs[job.id] = job
        self._note_models()
        return self._to_sink(job.start)

    def _note_models(self) -> None:
        models: dict[str, None] = {}
        for job in self.jobs.values():
            if job.plan.stage2 is not None:
                models[job.plan.stage2.model] = None
            models[job.plan.model_ref] = None
        self._models = tuple(models)

    def remove_job(self, job: Job) -> None:
        """Forget a job: its images leave the window (a finished or abandoned job)."""
        for key in [k for k, e in self.window.items() if e.job is job]:
            self._drop(key)
        self.jobs.pop(job.id, None)
        self._note_models()
        job.close()

    def end_job(self, job: Job) -> None:
        """No more images for this job (a file job's inputs ran out, a stream was closed):
        tell the sink its totals so it can finish it."""
        if job.end is None:
            job.end = protocol.JobEnd(job=job.id, images=job.images, tiles=job.tiles,
                                      secret=job.secret)
            self._to_sink(job.end)

    def watch_deadline(self, request: Request) -> None:
        if request.deadline is not None:
            heapq.heappush(self._deadlines, (request.deadline, id(request), request))

    def withdraw(self, request: Request, reason: BaseException | None = None) -> None:
        """A request is no longer wanted: its tiles are withdrawn (never sent, leases
        released), the sink forgets the image, and a late result is dropped."""
        if reason is not None:
            request.fail(reason)
        job = request.job
        if job is None or request.image is None:
            return  # not admitted yet: next_input skips it
        key = window_key(job.id, request.image)
        if key in self.window:
            self._drop(key)
            job.images -= 1
            self._to_sink(protocol.Withdraw(job=job.id, images=(request.image,),
                                            secret=job.secret))

    def _drop(self, key: str) -> None:
        entry = self.window.pop(key, None)
        if entry is None:
            return
        entry.job.in_flight -= 1
        self._release(entry)
        self.dispatch.forget_image(key)
        if self._reread_cache is not None and self._reread_cache[0] == key:
            self._reread_cache = None

    # ------------------------------------------------------------------ the loop

    def step(self, timeout_ms: int | None = None) -> None:
        """One pass: calls, workers, sink, housekeeping, admission, dispatch, then wait
        for something to happen (at most ``timeout_ms``)."""
        while self._calls:
            self._calls.popleft()()
        self.workers.receive()
        self._from_sink()
        now = time.monotonic()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_S
            self.dispatch.expire()
            self._expire_requests(now)
        for job in list(self.jobs.values()):
            self._admit_from(job)
        self._dispatch()
        if timeout_ms is None:
            timeout_ms = 20 if self.dispatch.total_credit() else 100
        if dict(self.poller.poll(timeout_ms)).get(self.wake.r):
            self.wake.drain()

    def _expire_requests(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, request = heapq.heappop(self._deadlines)
            if not request.finished:
                waited = now - request.submitted
                self.withdraw(request, RequestTimeout(
                    f"{request.name}: no record after {waited:.1f} s (deadline passed)"))

    def tell_sink(self, msg) -> bool:
        """Send a job's control message to the sink (in the engine's thread)."""
        return self._to_sink(msg)

    def _to_sink(self, msg) -> bool:
        return self.sink.send(msg, self.stop, while_waiting=self.workers.receive)

    # ------------------------------------------------------------------ admission

    def _admit_from(self, job: Job) -> None:
        """Admit the job's images while its window has room and it has no tile waiting
        (images are cut just in time: pixels in memory are those about to be sent)."""
        while job.in_flight < job.window and not self._has_unsent(job):
            nxt = job.next_input()
            if nxt is None:
                break
            self._admit(job, *nxt)
        if isinstance(job, FileJob) and job.exhausted:
            self.end_job(job)

    def _admit(self, job: Job, loaded: Loaded, request: Request | None) -> None:
        img, hit = loaded.image, loaded.hit
        ok = img is not None or (hit is not None and hit.error is None)
        iid = job.image_id(loaded, ok, request)
        if iid is SKIP:
            return
        seq = job.images
        job.images += 1
        if iid == RESUMED:
            return
        base = dict(job=job.id, image=iid, path=loaded.path, seq=seq, hash=loaded.hash,
                    abspath=os.path.abspath(loaded.path) if request is None else None,
                    secret=job.secret)
        if loaded.frames != 1 or loaded.time is not None:  # a frame of an animated or
            base.update(frame=loaded.frame, frames=loaded.frames,  # multi-page file, a video
                        time=loaded.time)
        plan: list[Tile] = []
        if hit is not None:
            info = protocol.ImageInfo(**base, width=hit.width, height=hit.height,
                                      error=loaded.error, cached=protocol.Cached(
                                          tiles=hit.tiles, detections=hit.detections,
                                          created=hit.created, embeddings=hit.embeddings,
                                          stage2=hit.stage2, segment=hit.segment))
            job.cached += 1
        elif img is None:
            info = protocol.ImageInfo(**base, error=loaded.error)
        else:
            plan = job.plan.tiles(img.width, img.height)
            job.reduced += img.reduced > 1
            if self.on_first_tiles is not None:  # the first image that needs a worker
                hook, self.on_first_tiles = self.on_first_tiles, None
                hook()
            info = protocol.ImageInfo(**base, width=img.width, height=img.height,
                                      tiles=len(plan))
        key = window_key(job.id, iid)
        entry = InFlight(job, info, plan, img.pixels if img is not None else None,
                         reduced=img.reduced if img is not None else 1, request=request,
                         sends=bytearray(len(plan)), keep=not loaded.rereadable)
        if plan and loaded.data is not None and self.workers.wire in ("auto", "image"):
            entry.whole = (self.workers.wire == "image" or
                           len(loaded.data) <= AUTO_IMAGE_BYTES_PER_TILE * len(plan))
            entry.data = loaded.data if entry.whole else None
        if request is not None:
            request.image, request.loading = iid, None  # the entry holds the pixels now
        self.window[key] = entry
        job.in_flight += 1
        job.tiles += len(plan)
        if plan:
            job.unsent.append(key)
        self._to_sink(info)

    def _has_unsent(self, job: Job) -> bool:
        """Whether an image of the job still has tiles never sent (dropping images
        written meanwhile, e.g. acked by a restarted sink that already had them)."""
        while job.unsent:
            entry = self.window.get(job.unsent[0])
            if entry is not None and not entry.all_sent:
                return True
            job.unsent.popleft()
        return False

    # ------------------------------------------------------------------ dispatch

    def _takes_whole(self, wid: bytes, entry: InFlight) -> bool:
        return entry.whole and self.workers.encoding(wid) == "image"

    @staticmethod
    def _model_of(entry: InFlight, index: int) -> str:
        """The model tile ``index`` of the image is for: a crop's (past the stage-1
        tiles) the second stage's, any other (a whole image too) the job's."""
        plan = entry.job.plan
        if index >= len(entry.plan) and plan.stage2 is not None:
            return plan.stage2.model
        return plan.model_ref

    def _fits(self, model: str) -> Callable[[TileKey], bool]:
        """Whether a tile out is one of ``model`` (a backup's choice)."""
        def fits(key: TileKey) -> bool:
            entry = self.window.get(key[0])
            return entry is not None and self._model_of(entry, key[1]) == model
        return fits

    def _resend_for(self, wid: bytes, model: str) -> TileKey | None:
        """The oldest tile of ``model`` to send again (tiles of other models keep their
        place; those written or leased meanwhile are dropped)."""
        d = self.dispatch
        resend, i = d.resend, 0
        while i < len(resend):
            key = resend[i]
            entry = self.window.get(key[0])
            if entry is None or d.is_leased(key):
                del resend[i]
                continue
            if self._model_of(entry, key[1]) != model:
                i += 1
                continue
            del resend[i]
            if key[1] == IMAGE and not self._takes_whole(wid, entry):
                self._send_tiles_again(key[0], entry)
                continue
            return key
        return None

    def _unsent_for(self, job: Job, model: str) -> str | None:
        """The job's first image with a tile of ``model`` never sent: its next stage-1
        tile, or for the second stage's model its next crop; None if it has none."""
        if not self._has_unsent(job):
            return None
        plan = job.plan
        if plan.stage2 is None:  # one model: the first image, as ever
            return job.unsent[0] if model == plan.model_ref else None
        if model == plan.stage2.model:
            crops = True
        elif model == plan.model_ref:
            crops = False
        else:
            return None
        for key in job.unsent:
            entry = self.window.get(key)
            if (entry is not None and not entry.all_sent
                    and (entry.next_tile >= len(entry.plan)) == crops):
                return key
        return None

    def _next_key(self, wid: bytes, model: str) -> tuple[TileKey, bool] | None:
        """What goes to ``wid`` next, a tile of ``model`` (one it serves): a tile
        ``(image, index)``, or a whole image ``(image, IMAGE)`` to a worker that takes
        images; and whether it is a backup."""
        d = self.dispatch
        if d.resend:
            key = self._resend_for(wid, model)
            if key is not None:
                return key, False
        jobs = list(self.jobs.values())
        for i in range(len(jobs)):
            job = jobs[(self._turn + i) % len(jobs)]
            key = self._unsent_for(job, model)
            if key is not None:
                self._turn = (self._turn + i + 1) % len(jobs)
                if self.workers.encoding(wid) == "image" and model == job.plan.model_ref:
                    key = self._image_for(job) or key
                entry = self.window[key]
                if entry.next_tile == 0 and self._takes_whole(wid, entry):
                    entry.next_tile = len(entry.plan)
                    job.unsent.remove(key)
                    return (key, IMAGE), False
                index = entry.next_tile
                entry.next_tile += 1
                if entry.all_sent:
                    job.unsent.remove(key)
                return (key, index), False
        if all(isinstance(j, FileJob) and j.exhausted for j in jobs):
            key = d.backup_candidate(wid, self._fits(model))
            if key is not None:
                return key, True
        return None

    def _image_for(self, job: Job) -> str | None:
        """For a worker that takes whole images: the job's first unsent image other than
        one that could go whole but whose tiles began going one by one (to raw workers),
        admitting the job's next input for it if need be (and if its window has room).
        Such a worker then gets an image of its own, whole, rather than raw tiles of
        another across its link; None: there is none now (it takes the next tile)."""
        while True:
            for key in job.unsent:
                entry = self.window.get(key)
                if (entry is not None and entry.next_tile < len(entry.plan)  # not crops
                        and not (entry.whole and entry.next_tile)):
                    return key
            if job.in_flight >= job.window:
                return None
            nxt = job.next_input()
            if nxt is None:
                return None
            self._admit(job, *nxt)

    def _send_tiles_again(self, key: str, entry: InFlight) -> None:
        """A whole image whose worker died, next in line for a worker that takes tiles
        (none that takes images is left, or it is this one's turn): its tiles go one by
        one, raw (the sink ignores those it already has, and raw tiles are the pixels a
        whole-image worker would have cut: the records are the same)."""
        log.info("image %s goes again tile by tile (%d tiles): the worker that had it is "
                 "gone and the next worker takes tiles", entry.info.path, len(entry.plan))
        entry.next_tile = 0
        if key not in entry.job.unsent:
            entry.job.unsent.appendleft(key)

    def _dispatch(self) -> None:
        batch: list[tuple[bytes, Future]] = []  # JPEG tiles leased, encoding on threads
        d = self.dispatch
        for model in self._models:
            if not d.serves(model):
                self._note_unserved(model)
                continue
            while True:
                wid = d.pick_worker(model)
                if wid is None:
                    break
                nxt = self._next_key(wid, model)
                if nxt is None:
                    break
                key, backup = nxt
                if key[1] == IMAGE:
                    self._flush(batch)  # in the order picked
                    self._send_image(wid, key, backup)
                else:
                    self._send_tile(wid, key, backup, batch)
                    if len(batch) >= 2 * self.encode_threads:
                        self._flush(batch)
        if self.unserved:
            for model in [m for m in self.unserved if d.serves(m) or m not in self._models]:
                del self.unserved[model]
        self._flush(batch)

    def _note_unserved(self, model: str) -> None:
        """No worker serves ``model``: if tiles of it wait, note since when, and the worker
        that would serve it (the Pool's notice); they wait for one."""
        if model in self.unserved:
            return
        d = self.dispatch
        waiting = any(self._model_of(self.window[k[0]], k[1]) == model
                      for k in d.resend if k[0] in self.window)
        for job in self.jobs.values():
            if waiting:
                break
            waiting = self._unsent_for(job, model) is not None
        if not waiting:
            return
        job = next(j for j in self.jobs.values()
                   if model in (j.plan.model_ref, getattr(j.plan.stage2, "model", None)))
        flags = f"--model {job.plan.spec.name}"
        if job.plan.stage2 is not None:
            flags += f" --stage2 {job.plan.stage2.model.partition('@')[0]}"
        self.unserved[model] = (time.monotonic(), flags)

    def _flush(self, batch: list[tuple[bytes, Future]]) -> None:
        """Send the encoded tiles of ``batch`` in the order they were leased."""
        for wid, future in batch:
            self.workers.transmit(wid, future.result())
        batch.clear()

    def _send_tile(self, wid: bytes, key: TileKey, backup: bool,
                   batch: list[tuple[bytes, Future]] | None = None) -> None:
        entry = self.window.get(key[0])
        if entry is None:
            return  # written meanwhile
        if key[1] >= len(entry.plan):
            self._send_crop(wid, key, entry, backup)
            return
        pixels = entry.pixels
        if pixels is None and entry.broken is None:
            pixels = self._reread(key[0], entry)
        if pixels is None:
            self._fail_tile(entry, key[1])
            return
        tile = entry.plan[key[1]]
        if entry.all_sent:
            self._all_cut(entry)  # every tile has been cut once: the pixels can go
        attempt = entry.sends[key[1]]
        entry.sends[key[1]] = min(255, attempt + 1)
        encoding = self.workers.encoding(wid)
        if encoding == "image":
            # An image that cannot go whole goes as JPEG tiles. One that may go whole but
            # goes tile by tile (a raw worker began it, or its image worker died) goes raw:
            # its other tiles are cut from these same pixels, by the raw workers or by an
            # image worker's own cut, and a JPEG tile's detections differ from the raw
            # tile's, so the image's record would depend on who took which tile.
            encoding = "raw" if entry.whole else "jpeg"
        make = _TileMaker(entry.info, entry.job.plan, pixels, tile, entry.reduced, attempt,
                          encoding)
        entry.job.tiles_sent += 1
        if batch is not None and encoding == "jpeg" and self.encode_threads > 1:
            self.workers.lease(wid, key, backup)
            batch.append((wid, self._encoder_pool().submit(make)))
            return
        if not self.workers.send(wid, key, make(), backup):
            entry.job.tiles_sent -= 1

    def _send_crop(self, wid: bytes, key: TileKey, entry: InFlight, backup: bool) -> None:
        """A stage-2 tile: object ``i``'s crop, always raw (a 112 x 112 face is 37 KB, and
        a JPEG would change its embedding), its box the object's in image pixels."""
        i = key[1] - len(entry.plan)
        if entry.crops is None or i >= len(entry.crops):
            return  # cut again after a sink restart: sent when the objects come anew
        attempt = entry.sends[key[1]]
        entry.sends[key[1]] = min(255, attempt + 1)
        info, stage2 = entry.info, entry.job.plan.stage2
        msg = protocol.Tile(
            job=info.job, image=info.image, index=key[1],
            box=tuple(float(v) for v in entry.objects.boxes[i]), scale=1.0,
            model=stage2.model, pixels=entry.crops[i], attempt=attempt, encoding="raw",
            task={"stage": 2})
        entry.job.tiles_sent += 1
        if not self.workers.send(wid, key, msg, backup):
            entry.job.tiles_sent -= 1

    def _on_objects(self, job: Job, msg: protocol.Objects) -> None:
        """The sink merged an image's stage 1: cut each object's crop from the image's
        original pixels (kept for a caller's array, read again from its file otherwise)
        and queue the crops as the image's next tiles. A copy (the sink publishes the
        objects again until an answer comes) changes nothing."""
        key = window_key(job.id, msg.image)
        entry = self.window.get(key)
        stage2 = job.plan.stage2
        if entry is None or stage2 is None or entry.crops is not None:
            return
        if msg.first != len(entry.plan) or not entry.all_sent:
            self.bad(protocol.ProtocolError(
                f"objects of {msg.image} for tile {msg.first}, its stage 1 has "
                f"{len(entry.plan)} tiles"))
            return
        pixels = entry.pixels
        if pixels is None and entry.broken is None:
            self.crop_rereads += 1  # past the budget (STAGE2_PIXELS_BYTES)
            pixels = self._reread(key, entry)
        self._release(entry)  # the crops are cut from ``pixels`` now, or never
        n = len(msg.detections)
        entry.objects = msg.detections
        entry.sends.extend(bytes(n))
        if pixels is None:  # the file changed or vanished: every object is an error
            entry.crops = []
            for i in range(n):
                self._fail_tile(entry, len(entry.plan) + i, model=stage2.model)
            return
        try:
            entry.crops = tasks_stage2.crops(stage2, pixels, msg.detections)
        except ValueError as exc:
            entry.crops = []
            entry.broken = {"type": "bad_result", "message": f"objects: {exc}"}
            for i in range(n):
                self._fail_tile(entry, len(entry.plan) + i, model=stage2.model)
            return
        if n and key not in job.unsent:
            job.unsent.append(key)

    def _all_cut(self, entry: InFlight) -> None:
        """Every stage-1 tile of the image has been cut (or it went whole): a file's pixels
        and bytes can go (read again if a tile must go again), except the pixels of a
        two-stage job's image while they fit the budget: its crops are cut from them."""
        if entry.keeps_pixels:
            return
        entry.data = None
        if not self._hold(entry):
            entry.pixels = None

    def _hold(self, entry: InFlight) -> bool:
        """Keep the image's pixels for its crops, if it has a second stage whose crops are
        not cut yet and they fit ``stage2_pixels_bytes``. Only full-size pixels qualify:
        a stage-2 job's plan decodes no JPEG draft (``JobPlan.reducer``), and the crops
        must be cut from the original image, as the references cut them."""
        if entry.held:
            return True
        if (entry.job.plan.stage2 is None or entry.crops is not None
                or entry.pixels is None or entry.reduced != 1):
            return False
        size = entry.pixels.nbytes
        if self.held_bytes + size > self.stage2_pixels_bytes:
            return False
        entry.held = size
        self.held_bytes += size
        return True

    def _release(self, entry: InFlight) -> None:
        """The image's crops are cut, or it left the window, or it starts again: the
        pixels held for its crops go (a caller's array or a stream's frame stays)."""
        if entry.held:
            self.held_bytes -= entry.held
            entry.held = 0
        if not entry.keeps_pixels:
            entry.pixels = None

    def _encoder_pool(self) -> ThreadPoolExecutor:
        if self._encoder is None:
            self._encoder = ThreadPoolExecutor(self.encode_threads, "zv-encode")
        return self._encoder

    def _send_image(self, wid: bytes, key: TileKey, backup: bool) -> None:
        """An image whole (``ImageWork``): its file's bytes, as read, and its tile plan."""
        entry = self.window.get(key[0])
        if entry is None:
            return
        data = entry.data
        if data is None and entry.broken is None:
            data = self._reread_bytes(entry)
        if data is None:
            for index in range(len(entry.plan)):
                self._fail_tile(entry, index)
            return
        self._all_cut(entry)  # read again if it must go again
        attempt = max(entry.sends)
        entry.sends[:] = bytes([min(255, attempt + 1)]) * len(entry.sends)
        plan, info = entry.job.plan, entry.info
        reducer = plan.reducer()
        draft = int(reducer(info.width, info.height)) if reducer is not None else 1
        msg = protocol.ImageWork(
            job=info.job, image=info.image, model=plan.model_ref, width=info.width,
            height=info.height, boxes=tuple(tuple(int(v) for v in t.box) for t in entry.plan),
            full=tuple(bool(t.full) for t in entry.plan), data=data, attempt=attempt,
            min_score=plan.settings.score_threshold, max_pixels=plan.settings.max_pixels,
            draft=draft if draft in (2, 4, 8) else 1, task=plan.tile_request)
        if self.workers.send(wid, key, msg, backup, weight=len(entry.plan)):
            entry.job.tiles_sent += len(entry.plan)
            if attempt:
                log.info("image %s sent whole again (%d tiles, attempt %d) to worker %s",
                         info.path, len(entry.plan), attempt + 1, wid.decode(errors="replace"))

    def _reread_bytes(self, entry: InFlight) -> bytes | None:
        """A file's bytes read again for an image that must go whole again; None (the
        image fails) when the file changed or vanished."""
        from zmqvision import io

        self.rereads += 1
        try:
            data = io.read_file(entry.info.path, max_bytes=entry.job.plan.settings.max_file_bytes)
        except (io.ImageError, OSError):
            data = None
        if data is None or io.content_hash(data) != entry.info.hash:
            what = "vanished" if data is None else "changed"
            entry.broken = {"type": "changed_during_job", "message":
                            f"{entry.info.path}: the file {what} while the job ran, before "
                            "all of its tiles were inferred (it had to be sent again)"}
            return None
        return data

    def _reread(self, key: str, entry: InFlight) -> np.ndarray | None:
        """Pixels of an image whose tiles must be sent again, read anew from its file (one
        image is cached: re-sent tiles of one image tend to come together)."""
        if self._reread_cache is not None and self._reread_cache[0] == key:
            return self._reread_cache[1]
        self.rereads += 1
        plan = entry.job.plan
        loaded = load_frame(entry.info.path, entry.info.frame or 0, plan.settings.max_pixels,
                            reduce=plan.reducer(), max_bytes=plan.settings.max_file_bytes)
        if loaded.image is None or loaded.image.content_hash != entry.info.hash:
            what = "vanished" if loaded.image is None else "changed"
            log.error("%s %s during the job: its tiles cannot be sent again; the image "
                      "gets an error record", entry.info.path, what)
            entry.broken = {"type": "changed_during_job", "message":
                            f"{entry.info.path}: the file {what} while the job ran, before "
                            "all of its tiles were inferred (a tile had to be sent again)"}
            return None
        entry.reduced = loaded.image.reduced  # the same file and plan: the same factor
        self._reread_cache = (key, loaded.image.pixels)
        return loaded.image.pixels

    def _fail_tile(self, entry: InFlight, index: int, model: str | None = None) -> None:
        """A tile that cannot be cut any more is answered here, as that tile's error: the
        sink writes the image's record with the error, instead of waiting for ever."""
        info = entry.info
        self._to_sink(protocol.Result(
            job=info.job, image=info.image, index=index, worker="ventilator",
            model=model or entry.job.plan.model_ref, detections=Detections.empty(),
            error=entry.broken or {"type": "unreadable", "message": info.path}))

    # ------------------------------------------------------------------ the sink

    def _from_sink(self) -> None:
        for msg, restarted in self.sink.receive():
            if restarted is not None:
                self._sink_restarted(restarted, self.sink.sink_id)
            job = self.jobs.get(getattr(msg, "job", None) or "")
            if job is None:
                continue
            if isinstance(msg, protocol.Ack):
                self._on_ack(job, msg)
            elif isinstance(msg, protocol.Record):
                self._on_record(job, msg)
            elif isinstance(msg, protocol.Objects):
                self._on_objects(job, msg)
            elif isinstance(msg, protocol.Progress):
                job.on_progress(msg)
            elif isinstance(msg, protocol.JobDone):
                job.on_done(msg)

    def _on_ack(self, job: Job, msg: protocol.Ack) -> None:
        for image, index in msg.tiles:
            self.dispatch.done((window_key(job.id, image), index))
        for image in msg.images:
            key = window_key(job.id, image)
            entry = self.window.get(key)
            if entry is None:
                continue
            request = entry.request
            if request is not None and not request.finished:
                # Its record was published before this ack and did not reach us (a full
                # queue on the way): have it computed and published again, a few times.
                if request.resent >= MAX_RECORD_RESENDS:
                    self._drop(key)
                    request.fail(JobFailed(
                        f"{request.name}: the sink wrote no record for it {request.resent + 1} "
                        "times (a sink that does not publish records: older than this pool?)"))
                    continue
                request.resent += 1
                log.warning("record of %s lost on the way: sending it again", request.name)
                self._resend_image(key, entry)
                self._to_sink(entry.info)
                continue
            self._drop(key)

    def _on_record(self, job: Job, msg: protocol.Record) -> None:
        key = window_key(job.id, msg.image)
        entry = self.window.get(key)
        if entry is None or entry.request is None:
            return  # a late copy, or a withdrawn request's
        try:
            record = msg.record()
        except protocol.ProtocolError as exc:
            self.bad(exc)
            return
        self._drop(key)
        job.on_record(entry.request, record)

    def _resend_image(self, key: str, entry: InFlight) -> None:
        self.dispatch.forget_image(key)
        entry.next_tile = 0
        if entry.crops is not None:  # stage 2 starts again when the sink merges stage 1
            entry.crops = entry.objects = None
            del entry.sends[len(entry.plan):]
        if not entry.keeps_pixels:
            entry.data = None  # re-read on demand; pixels held for crops not cut yet stay
            if not entry.held:
                entry.pixels = None
        if entry.plan and key not in entry.job.unsent:
            entry.job.unsent.append(key)

    def _sink_restarted(self, old: str, new: str | None) -> None:
        """Announce every job again and send every unwritten image again: the new sink's
        journal knows which records exist and merges everything else once."""
        log.warning("the sink restarted (%s → %s): sending %d unfinished images again",
                    old, new, len(self.window))
        for job in self.jobs.values():
            job.unsent.clear()
            self._to_sink(job.start)
            for key, entry in self.window.items():
                if entry.job is job:
                    self._to_sink(entry.info)
                    self._resend_image(key, entry)
            if job.end is not None:
                self._to_sink(job.end)


class _TileMaker:
    """Cuts one tile and makes its message (a JPEG's encoding included): run in the loop's
    thread, or on the encoder threads for a batch of JPEG tiles (nothing it touches is
    shared: the pixels are only read)."""

    __slots__ = ("info", "plan", "pixels", "tile", "reduced", "attempt", "encoding")

    def __init__(self, info: protocol.ImageInfo, plan, pixels: np.ndarray, tile: Tile,
                 reduced: int, attempt: int, encoding: str) -> None:
        self.info, self.plan, self.pixels, self.tile = info, plan, pixels, tile
        self.reduced, self.attempt, self.encoding = reduced, attempt, encoding

    def __call__(self) -> protocol.Tile:
        cut, scale = self.plan.cut(self.pixels, self.tile, self.reduced)
        info = self.info
        return protocol.Tile(
            job=info.job, image=info.image, index=self.tile.index, box=self.tile.box,
            scale=scale, model=self.plan.model_ref, pixels=cut,
            min_score=self.plan.settings.score_threshold, attempt=self.attempt,
            encoding=self.encoding, task=self.plan.tile_request,
            encoded=protocol.encode_jpeg(cut) if self.encoding == "jpeg" else None)
