"""The sink's message handling: each decoded message to the part that owns it.

The ventilator announces each job (JobStart), each image with its tile count (ImageInfo)
and the totals (JobEnd) over the same PULL socket the workers send results to. With those
the sink knows when an image is complete (all its tile indices have answered) and when the
job is (every announced image has its record). A result that arrives before its image's
announcement (different paths through the network) waits in a bounded buffer; a result for
a tile already merged is a duplicate and is dropped, so a re-sent tile is merged once.

``Withdraw`` takes images back that a caller no longer wants: the sink forgets what it
holds of them, writes no record, drops their late results without counting them bad, and
no longer counts them in progress; an image id announced again afterwards is a new image.
An image already written is not taken back (its record is in the journal).

Every control message of a job (ImageInfo, JobEnd, Withdraw, a repeated JobStart) must
carry the secret its JobStart brought (``protocol.new_job_secret``); one that does not is
a counted bad message and changes nothing, so a process that can reach the results port
and read the events cannot end, shorten, alter or stall another's job. A JobEnd must also
count exactly the images announced and not withdrawn. Results carry no secret (workers
never learn it): docs/reliability.md says what a forged result can do without CURVE.

What a stranger can make the sink hold is bounded in bytes (``sink.held``): results for
jobs or images not announced (orphans and early results) share ``MAX_HELD_RESULT_BYTES``,
oldest dropped first (never acked, so a real tile comes again); jobs announced that have
had no image, JobEnd or Withdraw yet share ``MAX_UNSTARTED_JOB_BYTES`` (oldest forgotten
first) and are forgotten after ``UNSTARTED_JOB_S`` (300 s) in any case; benchmarks/attacks.py
measures the bounds.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from zmqvision import protocol, results, security, sockets
from zmqvision.cache import ResultCache
from zmqvision.sink.acks import AckBatcher
from zmqvision.sink.config import SinkConfig
from zmqvision.sink.events import Events
from zmqvision.sink.forgotten import PUBLISHED, WITHDRAWN, Forgotten
from zmqvision.sink.held import Budget, job_bytes, result_bytes
from zmqvision.sink.jobs import ImageState, JobState
from zmqvision.sink.journal import Journal
from zmqvision.sink.output import RecordOutput
from zmqvision.sink.roster import Roster
from zmqvision.sink.saves import ResultSaver
from zmqvision.tasks import MaskSettings

log = logging.getLogger("zmqvision.sink")

MAX_ORPHAN_RESULTS = 10_000  # results for jobs not (yet) announced, all jobs together
# Orphan and early results, all jobs together: room for a few segmentation score maps
# (each up to protocol.MAX_SCORES_BYTES) besides 16 MiB of rows, so a tile that beats its
# image's announcement is held, not dropped and sent again.
MAX_HELD_RESULT_BYTES = (16 << 20) + 4 * protocol.MAX_SCORES_BYTES
MAX_UNSTARTED_JOB_BYTES = 16 << 20  # jobs with no image, JobEnd or Withdraw yet
UNSTARTED_JOB_S = 300.0  # such a job is forgotten after this long
# A two-stage image's objects are published again after this long without an answer for
# any of them (a PUB drops a message when no ventilator is there to take it, or its queue
# is full; a ventilator that has the crops already ignores the copy).
OBJECTS_AGAIN_S = 5.0

# What the sink's PULL socket takes; anything else is a bad message.
SINK_EXPECTS = (
    protocol.MsgType.RESULT, protocol.MsgType.IMAGE, protocol.MsgType.HEARTBEAT,
    protocol.MsgType.JOB_START, protocol.MsgType.JOB_END, protocol.MsgType.WITHDRAW,
    protocol.MsgType.LIVE,
)

# Under CURVE, the roles whose keys may send each message (security.py): a job's control
# messages only from ventilators, so a worker's key cannot end, shorten or alter a job.
MAY_SEND: dict[type, frozenset[str]] = {
    protocol.JobStart: frozenset({security.VENTILATOR}),
    protocol.ImageInfo: frozenset({security.VENTILATOR}),
    protocol.JobEnd: frozenset({security.VENTILATOR}),
    protocol.LiveStatus: frozenset({security.VENTILATOR}),
    protocol.Withdraw: frozenset({security.VENTILATOR}),
    # A ventilator answers a tile it can no longer cut itself, as that tile's error.
    protocol.Result: frozenset({security.WORKER, security.VENTILATOR}),
    protocol.Heartbeat: frozenset({security.WORKER}),
}


class Sink:
    """Sink state and message handling, apart from the socket loop so tests can drive it.

    ``journal``: the results file already locked (``run_sink`` locks it before binding and
    opens it after); without one the sink locks and opens ``config.journal`` itself."""

    def __init__(self, config: SinkConfig, publish: Callable[[list], None],
                 sink_id: str = "sink", cache: ResultCache | None = None,
                 journal: Journal | None = None) -> None:
        self.config = config
        self.publish = publish  # callable(frames) → sends on PUB
        self.sink_id = sink_id
        self.cache = cache  # results are saved here as images complete
        if journal is None:
            journal = Journal(config.journal, keep=config.append,
                              embed_file=config.embed_file)
            journal.open()
        self.journal = journal
        self.bad = sockets.BadMessages("sink")
        self.jobs: dict[str, JobState] = {}
        self.orphans: OrderedDict[str, list[protocol.Result]] = OrderedDict()
        self.orphan_count = 0
        self.held = Budget(MAX_HELD_RESULT_BYTES)  # orphan and early results' bytes
        # Jobs announced, not started: id → (when, bytes), oldest first.
        self.unstarted: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.unstarted_bytes = Budget(MAX_UNSTARTED_JOB_BYTES)
        self.forgotten = Forgotten()
        self.roster = Roster()
        self.events = Events(publish, sink_id, config.progress_s)
        self.acks = AckBatcher(sink_id, publish, journal, cache)
        self.output = RecordOutput(config, journal, publish, sink_id)
        self.saver = ResultSaver(cache)
        self.jobs_done = 0

    def close(self) -> None:
        for job in self.jobs.values():  # masks half-written when the sink stops go
            for img in job.images.values():
                if img.merging is not None:
                    img.merging.abort()
            job.close()
        self.journal.close()
        if self.cache is not None:
            self.cache.close()

    # ------------------------------------------------------------------ the loop's calls

    def tick(self) -> None:
        """Every status period: the sink's status, the roster, every job's progress, the
        finished jobs again, and cache saves held while the store was down."""
        self.expire_unstarted()
        self.events.status(jobs_active=len(self.jobs), bad_messages=self.bad.count)
        self.publish(protocol.encode(self.roster.snapshot(self.sink_id)))
        self.publish_progress(force=True)
        self.publish_finished()
        self.publish_objects_again()
        if self.cache is not None and self.cache.pending:
            self.cache.flush()

    def images_in_progress(self) -> int:
        """Images announced and not yet complete, over every job."""
        return sum(len(job.images) for job in self.jobs.values())

    def flush_acks(self, force: bool = False) -> None:
        self.acks.flush(force)

    def publish_progress(self, force: bool = False) -> None:
        self.events.progress(self.jobs.values(), force)

    def publish_finished(self) -> None:
        self.events.republish_finished()

    def publish_objects_again(self) -> None:
        """Two-stage images whose objects went out OBJECTS_AGAIN_S ago and have had no
        answer since: published again (the first copy may have been dropped)."""
        now = time.monotonic()
        for job in self.jobs.values():
            if job.stage2 is None:
                continue
            for img in job.images.values():
                if (job.waits_for_stage2(img) and not img.answers
                        and now - img.objects_at >= OBJECTS_AGAIN_S):
                    self._publish_objects(job, img)

    def _publish_objects(self, job: JobState, img: ImageState) -> None:
        img.objects_at = time.monotonic()
        self.publish(protocol.encode(protocol.Objects(
            sink=self.sink_id, job=job.id, image=img.info.image, first=img.info.tiles,
            detections=img.objects)))

    # ------------------------------------------------------------------ messages

    def handle(self, frames: Sequence) -> None:
        """One undecoded message (tests; the loop decodes with ``sockets.receive``)."""
        try:
            msg = protocol.decode(frames, SINK_EXPECTS)
        except protocol.ProtocolError as exc:
            self.bad(exc)
            return
        self.on_message(msg)

    def on_message(self, msg: protocol.Message, roles: frozenset[str] | None = None) -> None:
        """One decoded message; ``roles``: those of the CURVE key it came with (None
        without CURVE: every sender may send everything, and the job secret guards)."""
        if roles is not None and not roles & MAY_SEND.get(type(msg), frozenset()):
            self.bad(protocol.ProtocolError(
                f"{msg.TYPE.value} from a key allowed as {'/'.join(sorted(roles)) or 'nothing'}"
                f": refused (only {'/'.join(sorted(MAY_SEND.get(type(msg), ())))} may)"))
            return
        if isinstance(msg, protocol.Result):
            self._on_result(msg)
        elif isinstance(msg, protocol.ImageInfo):
            self._on_image(msg)
        elif isinstance(msg, protocol.Heartbeat):
            self.roster.heard(msg)
            self.publish(protocol.encode(msg))  # relayed for watchers
        elif isinstance(msg, protocol.JobStart):
            self._on_job_start(msg)
        elif isinstance(msg, protocol.JobEnd):
            self._on_job_end(msg)
        elif isinstance(msg, protocol.Withdraw):
            self._on_withdraw(msg)
        elif isinstance(msg, protocol.LiveStatus):
            job = self._job(msg, "live status")
            if job is not None:
                job.live = msg
                job.dirty = True
        else:
            self.bad(protocol.ProtocolError(f"{msg.TYPE.value} is not for the sink"))

    def _written(self, job: JobState, image: str) -> bool:
        return job.writes and self.journal.has(job.id, image)

    def _job(self, msg: protocol.ImageInfo | protocol.JobEnd | protocol.Withdraw,
             what: str) -> JobState | None:
        """The job a control message is for, if it carries the job's secret; None (and a
        bad message counted) otherwise."""
        job = self.jobs.get(msg.job)
        if job is None:
            self.bad(protocol.ProtocolError(f"{what} for unknown job {msg.job}"))
            return None
        if not job.knows(msg.secret):
            self.bad(protocol.ProtocolError(f"{what} for job {msg.job} without its secret: "
                                            "refused"))
            return None
        return job

    def _on_job_start(self, msg: protocol.JobStart) -> None:
        job = self.jobs.get(msg.job)
        if job is not None:
            if not job.knows(msg.secret):
                self.bad(protocol.ProtocolError(
                    f"job {msg.job} announced again without its secret: refused"))
            return  # a repeated announcement changes nothing
        if self.events.is_finished(msg.job):
            return
        try:
            job = JobState(msg, self.journal.counts.get(msg.job), held=self.held,
                           outputs=MaskSettings(masks=self.config.masks,
                                                rle=self.config.format == "coco"))
        except protocol.ProtocolError as exc:  # records delivered in no way we know
            self.bad(exc)
            return
        except (TypeError, ValueError) as exc:
            self.bad(protocol.ProtocolError(f"job {msg.job}: bad merge settings: {exc}"))
            return
        self.jobs[msg.job] = job
        if not job.images_seen:  # a restarted sink's job with records has started
            size = job_bytes(msg)
            self.unstarted[msg.job] = (time.monotonic(), size)
            self.unstarted_bytes.add(size)
            while self.unstarted_bytes.over and len(self.unstarted) > 1:
                self._forget_unstarted(next(iter(self.unstarted)), "over the byte budget")
        log.info("job %s: model %s from %s, records %s", msg.job, job.model, msg.host,
                 job.delivery)
        for result in self._take_orphans(msg.job):
            self._on_result(result)

    def _started(self, job: str) -> None:
        entry = self.unstarted.pop(job, None)
        if entry is not None:
            self.unstarted_bytes.remove(entry[1])

    def _forget_unstarted(self, job_id: str, why: str) -> None:
        self._started(job_id)
        job = self.jobs.pop(job_id, None)
        if job is not None:
            job.drop_all_early()
            self.bad(protocol.ProtocolError(f"job {job_id} forgotten: no image, end or "
                                            f"withdrawal came for it ({why})"))

    def expire_unstarted(self) -> None:
        """Forget jobs that have had no image, JobEnd or Withdraw for UNSTARTED_JOB_S."""
        now = time.monotonic()
        while self.unstarted:
            job_id, (since, _) = next(iter(self.unstarted.items()))
            if now - since <= UNSTARTED_JOB_S:
                return
            self._forget_unstarted(job_id, f"for {UNSTARTED_JOB_S:.0f} s")

    def _on_image(self, msg: protocol.ImageInfo) -> None:
        job = self._job(msg, "image")
        if job is None:
            return
        self._started(job.id)
        if msg.image in job.images:
            return
        if self._written(job, msg.image):
            self.acks.image(job.id, msg.image)  # announced again: say again it is written
            return
        # Published before (its record was lost on the way): wanted again, counted once.
        # Withdrawn before: a new image.
        again = self.forgotten.pop(job.id, msg.image) == PUBLISHED
        img = job.announce(msg, again)
        if msg.cached is not None or msg.error is not None:
            job.stage2_from_cache(img)  # a two-stage hit: its objects and their answers
            job.mask_from_cache(img)  # a segmentation hit: its mask written again
            self._complete(job, img)
            return
        for result in job.take_early(msg.image):
            self._add_part(job, img, result)

    def _on_job_end(self, msg: protocol.JobEnd) -> None:
        job = self._job(msg, "end")
        if job is None:
            return
        self._started(job.id)
        try:
            job.end(msg)
        except protocol.ProtocolError as exc:
            log.error("%s", exc)  # besides the count: a ventilator bug, or worse
            self.bad(exc)
            return
        self._maybe_finish(job)

    def _on_withdraw(self, msg: protocol.Withdraw) -> None:
        if msg.job not in self.jobs and self.events.is_finished(msg.job):
            return  # finished: too late, and harmless
        job = self._job(msg, "withdraw")
        if job is None:
            return
        self._started(job.id)
        for image in msg.images:
            if self._written(job, image):
                continue  # its record is in the journal: nothing to take back
            job.withdraw(image)
            self.forgotten.add(job.id, image, WITHDRAWN)
        self._maybe_finish(job)  # a JobEnd's count may now be reached

    def _on_result(self, msg: protocol.Result) -> None:
        job = self.jobs.get(msg.job)
        if job is None:
            self._hold_orphan(msg)
            return
        img = job.images.get(msg.image)
        if img is not None:
            self._add_part(job, img, msg)
            return
        if self._written(job, msg.image):
            self.acks.image(job.id, msg.image)  # a late copy of a written image's tile
            return
        why = self.forgotten.get(job.id, msg.image)
        if why == PUBLISHED:
            self.acks.image(job.id, msg.image)  # a late copy: say again it is delivered
            return
        if why == WITHDRAWN:
            return  # nobody wants it: dropped, not bad
        dropped = job.hold_early(msg)
        if dropped is not None:  # never acked: those tiles come again
            self.bad(protocol.ProtocolError(
                f"{dropped[1]} results for image {dropped[0]}, never announced"))
        self._shed_held()

    def _hold_orphan(self, msg: protocol.Result) -> None:
        """A result for a job not announced yet (or never): kept, bounded, until it is."""
        if self.events.is_finished(msg.job):
            return  # a late duplicate of a finished job
        self.orphans.setdefault(msg.job, []).append(msg)
        self.orphan_count += 1
        self.held.add(result_bytes(msg))
        while self.orphans and (self.orphan_count > MAX_ORPHAN_RESULTS or self.held.over):
            job_id = next(iter(self.orphans))
            dropped = self._take_orphans(job_id)
            self.bad(protocol.ProtocolError(f"{len(dropped)} results for unknown job {job_id}"))
        self._shed_held()

    def _take_orphans(self, job_id: str) -> list[protocol.Result]:
        results = self.orphans.pop(job_id, [])
        self.orphan_count -= len(results)
        self.held.remove(sum(result_bytes(r) for r in results))
        return results

    def _shed_held(self) -> None:
        """Over the held-results budget: orphans go first (oldest job first), then the
        oldest early results of the job that holds the most (only under a flood)."""
        while self.held.over and self.orphans:
            job_id = next(iter(self.orphans))
            dropped = self._take_orphans(job_id)
            self.bad(protocol.ProtocolError(f"{len(dropped)} results for unknown job {job_id}"))
        while self.held.over:
            job = max(self.jobs.values(), key=lambda j: j.early_bytes, default=None)
            dropped = job.drop_oldest_early() if job is not None else None
            if dropped is None:
                return
            self.bad(protocol.ProtocolError(
                f"{dropped[1]} results for image {dropped[0]}, never announced"))

    def _add_part(self, job: JobState, img: ImageState, msg: protocol.Result) -> None:
        try:
            added = job.add_part(img, msg)
        except protocol.ProtocolError as exc:
            self.bad(exc)
            return
        if not added and job.stage2 is not None and img.objects is None \
                and msg.index >= img.info.tiles:
            return  # a crop answered before this sink merged stage 1: it comes again
        self.acks.tile(job.id, msg.image, msg.index)  # a re-send is acked again
        if (added and job.stage2 is not None and img.objects is None
                and len(img.parts) == img.info.tiles and job.start_stage2(img) is not None):
            self._publish_objects(job, img)  # the record waits for stage 2
            return
        if added and job.is_whole(img):
            self._complete(job, img)

    def _complete(self, job: JobState, img: ImageState) -> None:
        info = img.info
        dets = job.finish_image(img)
        if img.error is not None:
            self.publish(protocol.encode(protocol.Failure(
                job=job.id, image=info.image, path=info.path, error=img.error)))
        record = results.make_record(
            path=info.path, image_id=info.image, job=job.id, width=info.width,
            height=info.height, model=job.model, labels=job.labels,
            detections=dets, error=img.error, content_hash=info.hash,
            tiles=info.tiles if info.cached is None else info.cached.tiles,
            settings=job.settings, cached=info.cached is not None,
            frame=info.frame, frames=info.frames, time=info.time,
            task=job.task.name,
            extra=job.record_fields(img, dets, self.output.embedding_rows(job)),
            per_detection=img.extras,
        )
        self.output.deliver(job, record, info.abspath or info.path)
        self.saver.save(job, img, dets)
        if job.writes:
            self.acks.image(job.id, info.image)  # once the journal is synced
        else:
            self.forgotten.add(job.id, info.image, PUBLISHED)
            self.acks.image_now(job.id, info.image)
        self._maybe_finish(job)

    def _maybe_finish(self, job: JobState) -> None:
        if not job.is_complete() or job.finished_at is not None:
            return
        job.finished_at = time.monotonic()
        self.acks.flush(force=True)  # and with it, the journal synced
        out = self.output.job_done(job)
        done = protocol.JobDone(
            job=job.id, images=job.images_done, failed=job.images_failed,
            tiles=job.tiles_done, detections=job.detections,
            seconds=job.finished_at - job.t0, out=out, cached=job.images_cached,
            proof=protocol.job_proof(job.start.secret, job.id, job.images_done,
                                     job.images_failed),
        )
        self.events.job_done(job, done)
        job.drop_all_early()
        job.close()
        self._started(job.id)
        del self.jobs[job.id]
        self.jobs_done += 1
        log.info(
            "job %s complete: %d images (%d failed, %d from the result cache), %d tiles in "
            "%.2f s", done.job, done.images, done.failed, done.cached, done.tiles, done.seconds,
        )
