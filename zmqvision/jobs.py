"""What the ventilator's engine runs: jobs, each a source of images with the settings
they are recognised with.

- ``FileJob``: the files of a ``zmqvision run`` / ``ventilate`` (a directory walked lazily,
  read ahead on threads), records written by the sink to its results file, the job over
  when the sink says ``JobDone``. Stable image ids (content hash + path), so ``--resume``
  and the sink's journal know what exists.
- ``StreamJob``: the requests a ``Pool``'s callers submit with equal settings, for as
  long as the pool lives. Every request is a new image (an id of its own, even for the
  same bytes twice), its record published back by the sink and handed to the caller's
  future.

The engine asks a job for its next loaded input (never waiting), for an image's id, and
tells it what happened (written, record, progress, done). Each job has its own window
(images announced and not yet written), so a large job never holds a small one back.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path

from zmqvision import protocol
from zmqvision.idset import IdSet
from zmqvision.inputs import Loaded, Lookup, ReadAhead
from zmqvision.plan import JobPlan

log = logging.getLogger("zmqvision.ventilator")

SKIP = None  # image_id's answer for an input that is not part of the job
RESUMED = ""  # image_id's answer for an image the results file already has


class Job:
    """The state every job shares; subclasses say where images come from."""

    records = "write"

    def __init__(self, job_id: str, plan: JobPlan, window: int,
                 secret: str | None = None) -> None:
        self.id = job_id
        self.plan = plan
        self.window = window
        # Shared with the sink alone (in the JobStart over the PUSH socket): every control
        # message of the job carries it, so nobody else can end or change the job.
        self.secret = secret or protocol.new_job_secret()
        self.start = plan.job_start(job_id, self.records, self.secret)
        self.unsent: deque[str] = deque()  # window keys with tiles never sent, oldest first
        self.in_flight = 0  # images announced and not yet written
        self.images = 0  # images counted in the job (JobEnd's count)
        self.tiles = 0
        self.tiles_sent = 0  # every send, copies included
        self.end: protocol.JobEnd | None = None
        self.cached = 0  # images answered from the result cache
        self.reduced = 0  # JPEGs decoded at 1/2, 1/4 or 1/8

    def next_input(self) -> tuple[Loaded, Request | None] | None:
        """The next input that is loaded; None when none is ready now."""
        raise NotImplementedError

    @property
    def exhausted(self) -> bool:
        """No input will come any more (a JobEnd can be sent)."""
        return False

    def image_id(self, loaded: Loaded, ok: bool, request: Request | None) -> str | None:
        raise NotImplementedError

    def on_progress(self, msg: protocol.Progress) -> None:
        pass

    def on_done(self, msg: protocol.JobDone) -> None:
        pass

    def on_record(self, request: Request | None, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class FileJob(Job):
    """A job over files: walked lazily, read and decoded ahead, ended by a JobEnd."""

    def __init__(self, job_id: str, plan: JobPlan, *, window: int,
                 read_ahead: ReadAhead, already: IdSet | None = None,
                 on_progress: Callable[[protocol.Progress], None] | None = None) -> None:
        super().__init__(job_id, plan, window, secret=stored_secret(job_id))
        self.reader = read_ahead
        self.already = already if already is not None else IdSet()
        self.seen = IdSet()  # ids of the images admitted: the same input twice is one image
        self.skipped = 0  # already in the results file (--resume)
        self.done: Future[protocol.JobDone] = Future()
        self._on_progress = on_progress
        self._forged_done = False

    def next_input(self) -> tuple[Loaded, None] | None:
        loaded = self.reader.ready()
        return None if loaded is None else (loaded, None)

    @property
    def exhausted(self) -> bool:
        return self.reader.exhausted

    def image_id(self, loaded: Loaded, ok: bool, request: None) -> str | None:
        iid = (protocol.image_id(loaded.hash, loaded.path, loaded.frame) if ok
               else protocol.failed_image_id(loaded.path, loaded.frame))
        if iid in self.seen:
            log.info("skipping %s: already in this job", loaded.path)
            return SKIP
        self.seen.add(iid)
        if iid in self.already:
            self.skipped += 1  # resumed: its record exists; the sink counts it from there
            return RESUMED
        return iid

    def on_progress(self, msg: protocol.Progress) -> None:
        if self._on_progress is not None:
            self._on_progress(msg)

    def on_done(self, msg: protocol.JobDone) -> None:
        if self.done.done():
            return
        expected = protocol.job_proof(self.secret, self.id, msg.images, msg.failed)
        if not hmac.compare_digest(expected, msg.proof):
            if not self._forged_done:
                self._forged_done = True
                log.error("job %s: a JobDone without the job's proof (another sink, or a "
                          "job of the same id started by someone else): ignored", self.id)
            return
        forget_secret(self.id)
        self.done.set_result(msg)

    def close(self) -> None:
        self.reader.close()


@dataclass(eq=False)
class Request:
    """One image a Pool's caller submitted: its future, and when it must be answered.

    ``source`` (the caller's path, bytes or array) is decoded only when its job has room,
    so a caller submitting thousands of large images holds their bytes, not their
    pixels."""

    name: str
    future: Future
    source: object = None
    deadline: float | None = None  # time.monotonic() after which it is withdrawn
    loading: Future | None = None  # its decode, once started
    job: StreamJob | None = None
    image: str | None = None  # its image id, once admitted
    submitted: float = field(default_factory=time.monotonic)
    resent: int = 0  # times its record was lost on the way and it was sent again

    @property
    def finished(self) -> bool:
        return self.future.done()

    def resolve(self, record: dict) -> None:
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile, by its caller
            self.future.set_result(record)
        self.source = self.loading = None

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exc)
        self.source = self.loading = None


class StreamJob(Job):
    """Requests with equal settings, as they come; records published back to callers.

    Requests wait undecoded; at most ``read_ahead`` + 1 are being decoded (on the Pool's
    decode threads, ``load``), handed to the engine in the order they came."""

    records = "publish"

    def __init__(self, job_id: str, plan: JobPlan, *, window: int,
                 load: Callable[[Request], Loaded], decoder: Executor,
                 wake: Callable[[], None], read_ahead: int = 2,
                 lookup: Lookup | None = None) -> None:
        super().__init__(job_id, plan, window)
        self.lookup = lookup
        self.waiting: deque[Request] = deque()  # not decoded yet
        self.loading: deque[Request] = deque()  # being decoded, in order
        self._load, self._decoder, self._wake = load, decoder, wake
        self._depth = read_ahead
        self._seq = itertools.count()
        self._salt = uuid.uuid4().hex

    def _fill(self) -> None:
        while len(self.loading) <= self._depth and self.waiting:
            request = self.waiting.popleft()
            if request.finished:
                continue  # cancelled or timed out while it waited
            request.loading = self._decoder.submit(self._load, request)
            request.loading.add_done_callback(lambda _f: self._wake())
            self.loading.append(request)

    def next_input(self) -> tuple[Loaded, Request] | None:
        self._fill()
        while self.loading and (self.loading[0].finished or self.loading[0].loading.done()):
            request = self.loading.popleft()
            if request.finished:
                continue
            try:
                loaded = request.loading.result()
            except Exception as exc:  # noqa: BLE001 - the caller hears of it
                request.fail(exc)
                continue
            self._fill()
            return loaded, request
        return None

    def image_id(self, loaded: Loaded, ok: bool, request: Request | None) -> str:
        # Every request is its own image, even the same bytes twice at once: the id mixes
        # in a sequence number, so the sink never merges two callers' tiles.
        return protocol.image_id(loaded.hash or "unreadable",
                                 f"{loaded.path}\0{self._salt}:{next(self._seq)}")

    def on_record(self, request: Request | None, record: dict) -> None:
        if request is not None:
            request.resolve(record)


def _secret_file(job_id: str) -> Path:
    from zmqvision.models.store import cache_dir

    name = hashlib.blake2b(job_id.encode("utf-8", "surrogateescape"), digest_size=16)
    return cache_dir() / "jobs" / f"{name.hexdigest()}.secret"


def stored_secret(job_id: str) -> str:
    """A file job's secret, kept on the ventilator's host until the job is done (mode 0600
    under the zmqvision cache directory): a ventilator that continues the job
    (``--resume``, ``--job ID``) after a crash speaks with the same secret, so the sink that
    still holds the job accepts it. Made afresh when there is none (or it cannot be kept)."""
    path = _secret_file(job_id)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        secret = path.read_text("ascii").strip()
        if 16 <= len(secret) <= protocol.MAX_SECRET_CHARS:
            return secret
    secret = protocol.new_job_secret()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)
    except OSError as exc:
        log.warning("job %s: its secret cannot be kept (%s): a ventilator that continues "
                    "it after a crash will need a new sink", job_id, exc)
    return secret


def forget_secret(job_id: str) -> None:
    with contextlib.suppress(OSError):
        _secret_file(job_id).unlink()
