"""The sink: PULL partial results, merge them per image, write records, publish events.

The ventilator announces each job (JobStart), each image with its tile count (ImageInfo)
and the totals (JobEnd) over the same PULL socket the workers send results to. With those
the sink knows when an image is complete (all its tile indices have answered) and when the
job is (every announced image has its record). A result that arrives before its image's
announcement (different paths through the network) waits in a bounded buffer; a result for
a tile already merged is a duplicate and is dropped, so a re-sent tile is merged once.

Events go out on a PUB socket: heartbeats relayed from workers, a full progress snapshot of
every job, the sink's own status, and JobDone, re-published for a minute so a subscriber
that joined late (or missed it) still learns that its job finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import zmq

from zmqvision import protocol, results, security, sockets
from zmqvision.boxes import Detections
from zmqvision.cache import ResultCache, job_fingerprint, open_cache
from zmqvision.cache.entry import detach_path
from zmqvision.idset import IdSet
from zmqvision.merge import MergeConfig, merge

log = logging.getLogger("zmqvision.sink")

MAX_EARLY_RESULTS = 10_000
ACK_EVERY_S = 0.1
DONE_JOB_REPUBLISH_S = 60.0
RECENT_FAILURES = 10
FORGET_WORKER_S = 300.0  # a worker silent this long leaves the roster


@dataclass(frozen=True)
class SinkConfig:
    results: str = sockets.bind_endpoint(sockets.RESULTS_PORT)
    events: str = sockets.bind_endpoint(sockets.EVENTS_PORT)
    events_fallback: str | None = None  # bound instead when ``events`` is taken (run)
    out: str = "results.jsonl"
    format: str = "jsonl"  # "jsonl" or "coco"
    draw: str | None = None
    append: bool = False
    once: bool = False  # exit after the first job completes
    status_s: float = 1.0
    progress_s: float = 0.2
    cache: str | None = "auto"  # result cache URL; "auto": $ZMQVISION_RESULTS_CACHE or SQLite
    curve: str | None = None  # key directory: CURVE on both bound sockets (security.py)


@dataclass
class _Image:
    info: protocol.ImageInfo
    parts: dict[int, Detections] = field(default_factory=dict)
    error: dict | None = None


@dataclass
class _Job:
    start: protocol.JobStart
    merge: MergeConfig
    labels: list[str]
    settings: dict  # what produced the results: tiling, merge, score threshold (records)
    fingerprint: str = ""  # the settings part of the job's result-cache keys
    spool: results.JsonlWriter | None = None
    spool_path: str | None = None
    images: dict[str, _Image] = field(default_factory=dict)
    early: dict[str, list[protocol.Result]] = field(default_factory=dict)
    early_count: int = 0
    images_seen: int = 0
    images_done: int = 0
    images_failed: int = 0
    images_cached: int = 0
    tiles_seen: int = 0
    tiles_done: int = 0
    detections: int = 0
    images_total: int | None = None
    tiles_total: int | None = None
    t0: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    dirty: bool = True
    last_progress: float = 0.0
    failures: deque = field(default_factory=lambda: deque(maxlen=RECENT_FAILURES))

    def progress(self) -> protocol.Progress:
        return protocol.Progress(
            job=self.start.job,
            images_seen=self.images_seen,
            images_done=self.images_done,
            images_failed=self.images_failed,
            tiles_seen=self.tiles_seen,
            tiles_done=self.tiles_done,
            images_total=self.images_total,
            tiles_total=self.tiles_total,
            elapsed=(self.finished_at or time.monotonic()) - self.t0,
            done=self.finished_at is not None,
            detections=self.detections,
            failures=tuple(self.failures),
            images_cached=self.images_cached,
        )

    def is_complete(self) -> bool:
        return self.images_total is not None and self.images_done >= self.images_total


class Sink:
    """Sink state and message handling, apart from the socket loop so tests can drive it."""

    def __init__(self, config: SinkConfig, publish, sink_id: str = "sink",
                 cache: ResultCache | None = None) -> None:
        self.config = config
        self.cache = cache  # results are saved here as images complete
        self.publish = publish  # callable(frames) → sends on PUB
        self.sink_id = sink_id
        # Per job, the images whose record is written (from the journal too), so a repeat is
        # never written twice; 8 bytes an image (see zmqvision.idset).
        self.completed: dict[str, IdSet] = {}
        self.journal: dict[str, dict[str, int]] = {}  # per job: what --out already holds
        self.acks: dict[str, tuple[list, list]] = {}  # per job: (tiles, images) to announce
        self.last_ack = 0.0
        self.jobs: dict[str, _Job] = {}
        self.finished: OrderedDict[str, tuple[float, protocol.JobDone]] = OrderedDict()
        self.orphans: OrderedDict[str, list[protocol.Result]] = OrderedDict()
        self.bad = sockets.BadMessages("sink")
        self.roster: dict[str, tuple[float, protocol.Heartbeat]] = {}
        if config.format == "jsonl" and config.append:
            self._load_journal(config.out)
        self.writer = (
            results.JsonlWriter(config.out, append=config.append)
            if config.format == "jsonl"
            else None
        )
        self.jobs_done = 0

    def _load_journal(self, path: str) -> None:
        """The results file is the journal: on restart, count what each job already has and
        remember the most recent records, so no image is written twice. A last line cut
        short by a crash is not a record: it is removed."""
        if not os.path.exists(path):
            return
        results.truncate_partial_line(path)
        for rec in results.read_jsonl(path, skip_bad=True):
            job, image = rec.get("job"), rec.get("id")
            if not isinstance(job, str) or not isinstance(image, str):
                continue
            counts = self.journal.setdefault(job, {"done": 0, "failed": 0, "detections": 0,
                                                   "cached": 0})
            counts["done"] += 1
            counts["failed"] += rec.get("error") is not None
            counts["cached"] += rec.get("cached") is True
            counts["detections"] += len(rec.get("detections") or [])
            self._remember(job, image)
        if self.journal:
            log.info("journal %s: %s", path, ", ".join(
                f"job {j}: {c['done']} records" for j, c in self.journal.items()))

    def _remember(self, job: str, image: str) -> None:
        written = self.completed.get(job)
        if written is None:
            written = self.completed[job] = IdSet()
        written.add(image)

    def _written(self, job: str, image: str) -> bool:
        written = self.completed.get(job)
        return written is not None and image in written

    def _ack(self, job: str, tile: tuple[str, int] | None = None,
             image: str | None = None) -> None:
        tiles, images = self.acks.setdefault(job, ([], []))
        if tile is not None:
            tiles.append(tile)
        if image is not None:
            images.append(image)

    def flush_acks(self, force: bool = False) -> None:
        """Publish pending acks, at most every ACK_EVERY_S: tiles received, and images whose
        records are written and synced to disk (so an acked image survives a crash)."""
        now = time.monotonic()
        if not self.acks or (not force and now - self.last_ack < ACK_EVERY_S):
            return
        if any(images for _, images in self.acks.values()) and self.writer is not None:
            self.writer.sync()
        if self.cache is not None:
            self.cache.flush()  # after the records: a saved entry never outruns its record
        for job, (tiles, images) in self.acks.items():
            for i in range(0, max(len(tiles), len(images)), 2000):
                self.publish(protocol.encode(protocol.Ack(
                    sink=self.sink_id, job=job, tiles=tuple(tiles[i:i + 2000]),
                    images=tuple(images[i:i + 2000]))))
        self.acks.clear()
        self.last_ack = now

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.cache is not None:
            self.cache.close()
        for job in self.jobs.values():
            if job.spool is not None:
                job.spool.close()
                with contextlib.suppress(OSError):
                    os.unlink(job.spool_path)

    # ------------------------------------------------------------------ messages

    def handle(self, frames) -> None:
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            self.bad(exc)
            return
        if isinstance(msg, protocol.Result):
            self._on_result(msg)
        elif isinstance(msg, protocol.ImageInfo):
            self._on_image(msg)
        elif isinstance(msg, protocol.Heartbeat):
            self.roster[msg.worker] = (time.monotonic(), msg)
            self.publish(frames)
        elif isinstance(msg, protocol.JobStart):
            self._on_job_start(msg)
        elif isinstance(msg, protocol.JobEnd):
            self._on_job_end(msg)
        else:
            self.bad(protocol.ProtocolError(f"{msg.TYPE.value} is not for the sink"))

    def _on_job_start(self, msg: protocol.JobStart) -> None:
        if msg.job in self.jobs or msg.job in self.finished:
            return  # a repeated announcement changes nothing
        try:
            merge_cfg = MergeConfig(**msg.merge)
        except (TypeError, ValueError) as exc:
            self.bad(protocol.ProtocolError(f"job {msg.job}: bad merge settings: {exc}"))
            return
        job = _Job(start=msg, merge=merge_cfg, labels=list(msg.model["labels"]),
                   settings={"tiling": msg.tiling, "merge": msg.merge,
                             "score_threshold": msg.options.get("score_threshold")},
                   fingerprint=job_fingerprint(msg))
        journal = self.journal.get(msg.job)
        if journal is not None:  # restarted: the records already written count
            job.images_done = job.images_seen = journal["done"]
            job.images_failed = journal["failed"]
            job.detections = journal["detections"]
            job.images_cached = journal["cached"]
        if self.config.format == "coco":
            fd, job.spool_path = tempfile.mkstemp(prefix=f"zmqvision-{msg.job}-", suffix=".jsonl")
            os.close(fd)
            job.spool = results.JsonlWriter(job.spool_path)
        self.jobs[msg.job] = job
        log.info("job %s: model %s from %s", msg.job, msg.model["ref"], msg.host)
        for result in self.orphans.pop(msg.job, []):
            self._on_result(result)

    def _on_image(self, msg: protocol.ImageInfo) -> None:
        job = self.jobs.get(msg.job)
        if job is None:
            self.bad(protocol.ProtocolError(f"image for unknown job {msg.job}"))
            return
        if msg.image in job.images:
            return
        if self._written(msg.job, msg.image):
            self._ack(msg.job, image=msg.image)  # announced again: say again it is written
            return
        job.images_seen += 1
        job.tiles_seen += msg.tiles
        job.dirty = True
        img = _Image(info=msg, error=msg.error)
        job.images[msg.image] = img
        if msg.cached is not None:
            job.images_cached += 1
            self._complete(job, img)
            return
        if msg.error is not None:
            self._complete(job, img)
            return
        early = job.early.pop(msg.image, [])
        job.early_count -= len(early)
        for result in early:
            self._add_part(job, img, result)

    def _on_job_end(self, msg: protocol.JobEnd) -> None:
        job = self.jobs.get(msg.job)
        if job is None:
            self.bad(protocol.ProtocolError(f"end of unknown job {msg.job}"))
            return
        job.images_total = msg.images
        job.tiles_total = msg.tiles
        job.dirty = True
        self._maybe_finish(job)

    def _on_result(self, msg: protocol.Result) -> None:
        job = self.jobs.get(msg.job)
        if job is None:
            if msg.job in self.finished:
                return  # a late duplicate of a finished job
            waiting = self.orphans.setdefault(msg.job, [])
            waiting.append(msg)
            if sum(len(v) for v in self.orphans.values()) > MAX_EARLY_RESULTS:
                job_id, dropped = self.orphans.popitem(last=False)
                self.bad(protocol.ProtocolError(f"{len(dropped)} results for unknown job {job_id}"))
            return
        img = job.images.get(msg.image)
        if img is None:
            if self._written(msg.job, msg.image):
                self._ack(msg.job, image=msg.image)  # a late copy of a written image's tile
                return
            job.early.setdefault(msg.image, []).append(msg)
            job.early_count += 1
            if job.early_count > MAX_EARLY_RESULTS:  # never acked: the tiles come again
                image, dropped = next(iter(job.early.items()))
                del job.early[image]
                job.early_count -= len(dropped)
                self.bad(protocol.ProtocolError(
                    f"{len(dropped)} results for image {image}, never announced"))
            return
        self._add_part(job, img, msg)

    def _add_part(self, job: _Job, img: _Image, msg: protocol.Result) -> None:
        if not 0 <= msg.index < img.info.tiles:
            self.bad(protocol.ProtocolError(f"tile index {msg.index} out of range"))
            return
        if msg.index in img.parts:
            self._ack(job.start.job, tile=(msg.image, msg.index))
            return  # a re-sent tile: merged once
        if msg.model != job.start.model["ref"]:
            wanted = job.start.model["ref"]
            msg = protocol.Result(
                job=msg.job, image=msg.image, index=msg.index, worker=msg.worker,
                model=msg.model, detections=Detections.empty(),
                error={"type": "model_mismatch",
                       "message": f"tile answered by {msg.model}, job uses {wanted}"},
            )
        img.parts[msg.index] = msg.detections
        self._ack(job.start.job, tile=(msg.image, msg.index))
        job.tiles_done += 1
        job.dirty = True
        if msg.error is not None and img.error is None:
            img.error = {
                "type": msg.error["type"],
                "message": f"tile {msg.index} on worker {msg.worker}: {msg.error['message']}",
            }
        if len(img.parts) == img.info.tiles:
            self._complete(job, img)

    def _complete(self, job: _Job, img: _Image) -> None:
        info = img.info
        dets = None
        if img.error is None:
            if info.cached is not None:
                dets = info.cached.detections  # merged when it was computed
            else:
                dets = merge(Detections.concat(list(img.parts.values())), job.merge)
            job.detections += len(dets)
        else:
            job.images_failed += 1
            failure = {"image": info.image, "path": info.path, "type": img.error["type"],
                       "message": img.error["message"]}
            job.failures.append(failure)
            self.publish(protocol.encode(protocol.Failure(
                job=job.start.job, image=info.image, path=info.path, error=img.error)))
        record = results.make_record(
            path=info.path, image_id=info.image, job=job.start.job, width=info.width,
            height=info.height, model=job.start.model["ref"], labels=job.labels,
            detections=dets, error=img.error, content_hash=info.hash,
            tiles=info.tiles if info.cached is None else info.cached.tiles,
            settings=job.settings, cached=info.cached is not None,
        )
        (job.spool or self.writer).write(record)
        if info.cached is None:
            self._save(job, img, dets)
        if self.config.draw and img.error is None:
            results.draw_record(record, info.abspath or info.path, self.config.draw)
        del job.images[info.image]
        self._remember(job.start.job, info.image)
        self._ack(job.start.job, image=info.image)
        job.images_done += 1
        job.dirty = True
        self._maybe_finish(job)

    def _save(self, job: _Job, img: _Image, dets: Detections | None) -> None:
        """Put a computed result into the cache: every success, and an error only when
        the image's bytes cause it (a tile's failure may be transient: never cached)."""
        info = img.info
        if self.cache is None or info.hash is None:
            return
        error = None
        if img.error is not None:
            if info.error is None:
                return  # a tile failed (inference, model mismatch): may not happen again
            error = detach_path(info.error, info.path)
            if error is None:
                return
        self.cache.save(job.fingerprint, info.hash, model=job.start.model["ref"],
                        width=info.width, height=info.height, tiles=info.tiles,
                        detections=dets, error=error)

    def _maybe_finish(self, job: _Job) -> None:
        if not job.is_complete() or job.finished_at is not None:
            return
        job.finished_at = time.monotonic()
        self.flush_acks(force=True)  # and with it, the journal synced
        out = self.config.out
        if job.spool is not None:
            job.spool.close()
            results.write_coco(results.read_jsonl(job.spool_path), job.labels, out)
            os.unlink(job.spool_path)
        done = protocol.JobDone(
            job=job.start.job, images=job.images_done, failed=job.images_failed,
            tiles=job.tiles_done, detections=job.detections,
            seconds=job.finished_at - job.t0, out=os.path.abspath(out),
            cached=job.images_cached,
        )
        self.publish(protocol.encode(job.progress()))
        self.publish(protocol.encode(done))
        del self.jobs[job.start.job]
        self.finished[job.start.job] = (time.monotonic(), done)
        self.jobs_done += 1
        log.info(
            "job %s complete: %d images (%d failed, %d from the result cache), %d tiles in "
            "%.2f s", done.job, done.images, done.failed, done.cached, done.tiles, done.seconds,
        )

    # ------------------------------------------------------------------ events

    def publish_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        for job in self.jobs.values():
            if force or (job.dirty and now - job.last_progress >= self.config.progress_s):
                self.publish(protocol.encode(job.progress()))
                job.dirty = False
                job.last_progress = now

    def publish_workers(self, sink_id: str) -> None:
        """The roster as one snapshot: late joiners learn of silent workers too."""
        now = time.monotonic()
        for wid in [w for w, (seen, _) in self.roster.items() if now - seen > FORGET_WORKER_S]:
            del self.roster[wid]
        entries = tuple({**beat.header(), "age": now - seen}
                        for seen, beat in self.roster.values())
        self.publish(protocol.encode(protocol.Workers(sink=sink_id, workers=entries)))

    def publish_finished(self) -> None:
        now = time.monotonic()
        while self.finished:
            first = next(iter(self.finished.values()))
            if now - first[0] <= DONE_JOB_REPUBLISH_S:
                break
            self.finished.popitem(last=False)
        for _, done in self.finished.values():
            self.publish(protocol.encode(done))


def run_sink(config: SinkConfig, stop: sockets.StopFlag | None = None, on_ready=None,
             ctx: zmq.Context | None = None) -> int:
    """Serve until ``stop`` is set (or, with ``once``, until the first job completes).

    ``ctx``: a context shared with the ventilator and a worker in this process (inproc
    endpoints); the caller owns it.
    """
    stop = stop or sockets.StopFlag()
    own_ctx = ctx is None
    ctx = ctx if ctx is not None else zmq.Context()
    pull = sockets.make_socket(ctx, zmq.PULL, rcvhwm=10_000, maxmsgsize=16 << 20)
    pub = sockets.make_socket(ctx, zmq.PUB, sndhwm=1000)
    sink_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    started = time.monotonic()

    def publish(frames) -> None:
        sockets.try_send(pub, frames, copy=True)

    # One cleanup for every way out, a refused CURVE key or an unwritable --out included.
    secured = sink = wake = None
    try:
        secured = security.secure(ctx, config.curve, servers=(pull, pub))
        sink = Sink(config, publish, sink_id, cache=open_cache(config.cache))
        wake = sockets.WakePipe(stop)  # SIGTERM ends the poll at once
        results_ep = sockets.bind(pull, config.results)
        try:
            events_ep = sockets.bind(pub, config.events)
        except OSError:
            if config.events_fallback is None:
                raise
            events_ep = sockets.bind(pub, config.events_fallback)
            log.warning("%s is taken; publishing events on %s", config.events, events_ep)
        log.info("sink %s: results on %s, events on %s, out %s", sink_id, results_ep,
                 events_ep, config.out)
        if on_ready is not None:
            on_ready({"results": results_ep, "events": events_ep})
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(wake.r, zmq.POLLIN)
        next_status = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_status:
                publish(protocol.encode(protocol.SinkStatus(
                    sink=sink_id, host=socket.gethostname(), pid=os.getpid(),
                    uptime=now - started, jobs_active=len(sink.jobs),
                    bad_messages=sink.bad.count,
                )))
                sink.publish_workers(sink_id)
                sink.publish_progress(force=True)
                sink.publish_finished()
                if sink.cache is not None and sink.cache.pending:
                    sink.cache.flush()  # saves held while the store was down
                next_status = now + config.status_s
            if pull in dict(poller.poll(50)):
                for _ in range(1000):
                    try:
                        frames = pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    sink.handle(frames)
            sink.flush_acks()
            sink.publish_progress()
            if config.once and sink.jobs_done:
                # Give subscribers a moment to hear JobDone before the PUB socket goes.
                for _ in range(3):
                    sink.publish_finished()
                    time.sleep(0.05)
                break
        return 0
    finally:
        if sink is not None:
            sink.close()
        if secured is not None:
            secured.close()
        pull.close(linger=0)
        pub.close(linger=0)
        if own_ctx:
            ctx.term()
        if wake is not None:
            wake.close()
