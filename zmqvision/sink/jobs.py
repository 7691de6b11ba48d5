"""Merge state per job: the images announced and not yet complete, the tiles each has
answered, results that came before their image's announcement, and the job's counters.

Pure bookkeeping, no sockets and no files: ``zmqvision.sink.core.Sink`` feeds it decoded
messages and does the writing. An image's state lives from its announcement until its
record is made (or it is withdrawn); nothing per image stays behind here, so a job that
never ends (a library pool's stream) holds only the images in flight.
"""

from __future__ import annotations

import hmac
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from zmqvision import protocol, tasks
from zmqvision.boxes import Detections
from zmqvision.cache import job_fingerprint
from zmqvision.merge import MergeConfig
from zmqvision.sink.held import Budget, result_bytes
from zmqvision.tasks import segmentation, stage2

MAX_EARLY_RESULTS = 10_000  # per job: results waiting for their image's announcement
RECENT_FAILURES = 10  # failed images a progress snapshot names


def delivery_of(start: protocol.JobStart) -> str:
    """Where a job's records go (``options["records"]``, protocol.RECORD_DELIVERY):
    ``"write"`` (the default), ``"publish"`` or ``"both"``; ProtocolError otherwise."""
    mode = start.options.get("records", "write")
    if mode not in protocol.RECORD_DELIVERY:
        raise protocol.ProtocolError(
            f"job {start.job}: records {mode!r} is not one of {protocol.RECORD_DELIVERY}")
    return mode


@dataclass
class JournalCounts:
    """What the journal already holds of one job (a restarted sink continues from it)."""

    done: int = 0
    failed: int = 0
    detections: int = 0
    cached: int = 0


@dataclass
class ImageState:
    info: protocol.ImageInfo
    parts: dict[int, Detections] = field(default_factory=dict)
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)  # a classifier's
    # A merge fed as tiles arrive (segmentation's stitcher, tasks.ImageMerge), made with
    # the first tile; ``fields``: what it gave the record when the image finished.
    merging: tasks.ImageMerge | None = None
    fields: dict | None = None
    error: dict | None = None
    # Announced again after its record was published (the record was lost on the way to
    # its caller): it is written or published again but counted once in the job.
    again: bool = False
    # A two-stage job's image (tasks.stage2): its merged stage-1 objects once every
    # stage-1 tile is in (object i is stage-2 tile ``info.tiles + i``), each object's
    # answer (embedding, text, text score) as it comes, and when the objects were last
    # published to the ventilators.
    objects: Detections | None = None
    answers: dict[int, tuple] = field(default_factory=dict)
    objects_at: float = 0.0
    extras: list[dict] | None = None  # per object: landmarks, identity (record_extras)
    kept: np.ndarray | None = None  # the objects the record holds, in its order


class JobState:
    """One job's merge state and counters; the source of its Progress snapshots."""

    def __init__(self, start: protocol.JobStart, journal: JournalCounts | None = None,
                 held: Budget | None = None,
                 outputs: tasks.MaskSettings | None = None) -> None:
        """``journal``: what the results file already holds of this job (a restart).
        ``held``: the sink's budget for held results, which early results count in.
        ``outputs``: where a segmentation job's masks go (the sink's ``--masks``).
        ProtocolError for an unknown record delivery; TypeError or ValueError for bad
        merge settings."""
        self.start = start
        self.id = start.job
        self._secret = start.secret.encode()
        self.delivery = delivery_of(start)
        self.merge = MergeConfig(**start.merge)  # TypeError/ValueError: refused by the caller
        # The job's task (zmqvision.tasks): how tiles merge and what a record holds.
        try:
            self.task, self.task_settings = tasks.of_options(start.options)
        except ValueError as exc:
            raise protocol.ProtocolError(f"job {start.job}: {exc}") from None
        self.labels = list(start.model["labels"])
        self.model = start.model["ref"]
        # What produced the results (copied into every record).
        self.settings = {"tiling": start.tiling, "merge": start.merge,
                         "score_threshold": start.options.get("score_threshold")}
        if "task" in start.options:  # not detection: its settings go in every record
            self.settings["task"] = start.options["task"]
        # A second stage (tasks.stage2): its settings go in every record too; the gallery
        # is opened at the first face to match.
        try:
            self.stage2 = stage2.of_options(start.options)
        except ValueError as exc:
            raise protocol.ProtocolError(f"job {start.job}: {exc}") from None
        if self.stage2 is not None:
            if self.task.name != "detection":
                raise protocol.ProtocolError(f"job {start.job}: a second stage follows a "
                                             "detector")
            self.settings["stage2"] = start.options["stage2"]
        self.matcher: stage2.Matcher | None = None
        self.objects_seen = 0  # stage-2 tiles expected so far (objects found)
        self.objects_done = 0
        self.fingerprint = job_fingerprint(start)  # the settings part of its cache keys
        # Files beside the records (masks) only for a job whose records are written.
        self.outputs = replace(outputs or tasks.MaskSettings(), write=self.writes)
        self.images: dict[str, ImageState] = {}
        self.early: dict[str, list[protocol.Result]] = {}
        self.early_count = 0
        self.early_bytes = 0
        self.held = held if held is not None else Budget(limit=1 << 62)
        if journal is None or not self.writes:  # nothing of a publish-only job is journaled
            journal = JournalCounts()
        self.images_seen = journal.done  # restarted: the records already written count
        self.images_done = journal.done
        self.images_failed = journal.failed
        self.images_cached = journal.cached
        self.detections = journal.detections
        self.tiles_seen = 0
        self.tiles_done = 0
        self.images_total: int | None = None
        self.tiles_total: int | None = None
        self.t0 = time.monotonic()
        self.finished_at: float | None = None
        self.dirty = True  # a Progress snapshot is due
        self.last_progress = 0.0
        self.failures: deque[dict] = deque(maxlen=RECENT_FAILURES)
        self.live: protocol.LiveStatus | None = None  # a live job's last word on its lag

    @property
    def writes(self) -> bool:
        """Its records go to the results file (the journal)."""
        return self.delivery != "publish"

    @property
    def publishes(self) -> bool:
        """Its records go out on the PUB socket as ``zv.record``."""
        return self.delivery != "write"

    def knows(self, secret: str) -> bool:
        """Whether a control message carries this job's secret (JobStart.secret), in
        constant time: only the ventilator that started the job may change it."""
        return hmac.compare_digest(self._secret, secret.encode())

    # ------------------------------------------------------------------ images

    def announce(self, info: protocol.ImageInfo, again: bool = False) -> ImageState:
        """An image of the job; ``again``: one whose record was published before and is
        wanted again (counted once)."""
        img = ImageState(info=info, error=info.error, again=again)
        self.images[info.image] = img
        if again:
            self.tiles_seen += info.tiles
            self.dirty = True
            return img
        self.images_seen += 1
        self.tiles_seen += info.tiles
        if info.cached is not None:
            self.images_cached += 1
        self.dirty = True
        return img

    def hold_early(self, result: protocol.Result) -> tuple[str, int] | None:
        """Keep a result until its image is announced. Over MAX_EARLY_RESULTS the oldest
        image's results go (never acked, so their tiles come again): returns that image
        and how many were dropped."""
        self.early.setdefault(result.image, []).append(result)
        self.early_count += 1
        size = result_bytes(result)
        self.early_bytes += size
        self.held.add(size)
        if self.early_count <= MAX_EARLY_RESULTS and not self.held.over:
            return None
        return self.drop_oldest_early()

    def drop_oldest_early(self) -> tuple[str, int] | None:
        """The oldest early image's results go (never acked: their tiles come again);
        returns that image and how many results were dropped."""
        if not self.early:
            return None
        image = next(iter(self.early))
        return image, len(self.take_early(image))

    def take_early(self, image: str) -> list[protocol.Result]:
        early = self.early.pop(image, [])
        self.early_count -= len(early)
        size = sum(result_bytes(r) for r in early)
        self.early_bytes -= size
        self.held.remove(size)
        return early

    def drop_all_early(self) -> int:
        """The job is gone: what it held goes with it. Returns how many results."""
        return sum(len(self.take_early(image)) for image in list(self.early))

    def add_part(self, img: ImageState, msg: protocol.Result) -> bool:
        """Merge one tile's result into its image; False for a tile already merged (a
        re-send). A result of another model than the job's becomes that tile's error,
        never detections. ProtocolError for an index the image does not have. A
        two-stage job's index past its stage-1 tiles is an object's answer."""
        if self.stage2 is not None and msg.index >= img.info.tiles:
            return self._add_answer(img, msg)
        if not 0 <= msg.index < img.info.tiles:
            raise protocol.ProtocolError(f"tile index {msg.index} out of range")
        if msg.index in img.parts:
            return False
        detections, error = msg.detections, msg.error
        if msg.model != self.model:
            detections = Detections.empty()
            error = {"type": "model_mismatch",
                     "message": f"tile answered by {msg.model}, job uses {self.model}"}
        elif error is None:
            why = self.task.check_part(self.task_settings, len(self.labels), detections,
                                       msg.embedding)
            if why is None and img.error is None:
                why = self._merge_now(img, msg)
            if why is not None:  # a buggy or forged worker: the tile's error, not data
                detections, error = Detections.empty(), {"type": "bad_result", "message": why}
        img.parts[msg.index] = detections
        if error is None and msg.embedding is not None:
            img.embeddings[msg.index] = msg.embedding
        self.tiles_done += 1
        self.dirty = True
        if error is not None and img.error is None:
            img.error = {"type": error["type"],
                         "message": f"tile {msg.index} on worker {msg.worker}: "
                                    f"{error['message']}"}
        return True

    def _add_answer(self, img: ImageState, msg: protocol.Result) -> bool:
        """A stage-2 result: object ``msg.index - info.tiles``'s answer; False for a
        copy. One for an image whose stage 1 is not merged here (a sink that restarted
        while the crop was out) is dropped unacked: its crop goes again once the objects
        are published anew. ProtocolError for an object the image does not have."""
        if img.objects is None:
            return False
        i = msg.index - img.info.tiles
        if not 0 <= i < len(img.objects):
            raise protocol.ProtocolError(f"stage-2 tile index {msg.index} out of range")
        if i in img.answers:
            return False
        error = msg.error
        if error is None and msg.model != self.stage2.model:
            error = {"type": "model_mismatch",
                     "message": f"object answered by {msg.model}, job uses {self.stage2.model}"}
        if error is None:
            why = stage2.check_answer(self.stage2, msg.embedding, msg.text)
            if why is not None:
                error = {"type": "bad_result", "message": why}
        img.answers[i] = (msg.embedding, msg.text, msg.text_score)
        self.objects_done += 1
        self.dirty = True
        if error is not None and img.error is None:
            img.error = {"type": error["type"],
                         "message": f"object {i} (tile {msg.index}) on worker {msg.worker}: "
                                    f"{error['message']}"}
        return True

    def start_stage2(self, img: ImageState) -> Detections | None:
        """Stage 1 of a two-stage image is whole: merge it (tile order, as the reference)
        and keep the objects; those to send to stage 2, or None when there are none (or
        the image failed): its record can be written at once."""
        if img.error is not None:
            return None
        objects = stage2.objects_of(self.stage2, self.task.merge(img.parts, self.merge))
        if len(objects) and (objects.landmarks is None
                             or objects.landmarks.shape[1] != self.stage2.points):
            img.error = {"type": "bad_result", "message": "stage-1 results without the "
                         f"{self.stage2.points} points per object stage 2 needs"}
            return None
        if len(objects) and self.matcher is None and self.stage2.kind == "identify":
            try:  # before any crop goes out: a gallery that cannot open fails the image
                self.matcher = stage2.Matcher(self.stage2)
            except Exception as exc:  # a bad URL, a store that is down, a corrupt file
                img.error = {"type": "gallery_failed", "message": str(exc)}
                return None
        img.objects = objects
        self.objects_seen += len(objects)
        self.dirty = True
        return img.objects if len(img.objects) else None

    def stage2_from_cache(self, img: ImageState) -> None:
        """A two-stage image answered from the result cache: its objects and their
        answers (embeddings or texts) as if every crop had been answered, so the record
        is made as a computed one's (``record_extras``: identities from the gallery as it
        is now). A cached image without the stage 2 this job needs (a ventilator's bug)
        is the image's error, never a record without it; so is a gallery that cannot
        open. Counts no object: no crop was cut."""
        cached = img.info.cached
        if self.stage2 is None or cached is None or img.error is not None:
            return
        try:
            objects, answers = stage2.from_cache(self.stage2, cached)
        except ValueError as exc:
            img.error = {"type": "bad_result", "message": str(exc)}
            return
        if len(objects) and self.matcher is None and self.stage2.kind == "identify":
            try:
                self.matcher = stage2.Matcher(self.stage2)
            except Exception as exc:  # as start_stage2: the image's error
                img.error = {"type": "gallery_failed", "message": str(exc)}
                return
        img.objects, img.answers = objects, answers

    def mask_from_cache(self, img: ImageState) -> None:
        """A segmentation image answered from the result cache: the cached mask written
        where this sink puts the image's (``--masks``, which may not be the computing
        run's) and the record's ``segmentation`` made from it (``img.fields``), as a
        stitched image's. A hit without a mask of this image (a ventilator's bug) is the
        image's ``bad_result``, a mask that cannot be written its ``output_failed``;
        never a record without its mask."""
        if (self.task.name != "segmentation" or img.info.cached is None
                or img.error is not None):
            return
        try:
            img.fields = segmentation.from_cache(self.start, img.info, self.outputs)
        except ValueError as exc:
            img.error = {"type": "bad_result", "message": str(exc)}
        except OSError as exc:  # e.g. the masks' disk is full
            img.error = {"type": "output_failed", "message": str(exc)}

    def waits_for_stage2(self, img: ImageState) -> bool:
        """Stage 1 is whole and merged, and some object has no answer yet."""
        return img.objects is not None and len(img.answers) < len(img.objects)

    def _stage2_extras(self, img: ImageState) -> None:
        """Per object, its record entry's second-stage fields (``img.extras``); a match
        that fails (a gallery of another embedding size) is the image's error."""
        try:
            img.kept, img.extras = stage2.record_extras(self.stage2, img.objects,
                                                        img.answers, self.matcher)
        except Exception as exc:
            img.error = {"type": "gallery_failed", "message": str(exc)}

    def close(self) -> None:
        if self.matcher is not None:
            self.matcher.close()
            self.matcher = None

    def _merge_now(self, img: ImageState, msg: protocol.Result) -> str | None:
        """Feed a tile to its image's running merge (segmentation), made with the image's
        first tile; why the tile cannot be merged, or None. A score map for a task that
        merges at the end is refused (no task but segmentation sends one)."""
        if img.merging is None:
            try:
                img.merging = self.task.image_merge(self.task_settings, self.start, img.info,
                                                    self.outputs)
            except ValueError as exc:
                return str(exc)
        if img.merging is None:
            return "a score map for a task without masks" if msg.scores is not None else None
        return img.merging.add(msg.index, msg)

    @staticmethod
    def is_whole(img: ImageState) -> bool:
        """Every tile is in: stage 1's, and for a two-stage image every object's."""
        if len(img.parts) != img.info.tiles:
            return False
        return img.objects is None or len(img.answers) == len(img.objects)

    def finish_image(self, img: ImageState) -> Detections | None:
        """The image's merged detections (None when it failed), counted (once: an image
        announced ``again`` was counted the first time); its state goes."""
        info = img.info
        del self.images[info.image]
        self.dirty = True
        counted = not img.again
        self.images_done += counted
        if img.merging is not None:
            if img.error is None:
                try:
                    img.fields = img.merging.finish()
                except (ValueError, OSError) as exc:  # e.g. the mask's disk is full
                    img.error = {"type": "output_failed", "message": str(exc)}
            if img.error is not None:  # a failed tile or mask: no partial file is left
                img.merging.abort()
            img.merging = None
        if img.objects is not None and img.error is None:
            self._stage2_extras(img)
        if img.error is not None:
            if counted:
                self.images_failed += 1
                self.failures.append({"image": info.image, "path": info.path,
                                      "type": img.error["type"],
                                      "message": img.error["message"]})
            return None
        if img.objects is not None:
            # A two-stage image (computed, or cached: stage2_from_cache): merged when its
            # stage 1 was whole; the objects its record holds (text lines read as nothing
            # are left out) in its order.
            dets = img.objects if img.kept is None else img.objects.take(img.kept)
        elif info.cached is not None:
            dets = info.cached.detections  # merged when it was computed
        else:
            dets = self.task.merge(img.parts, self.merge)
        if counted:
            self.detections += self.task.counted(dets)
        return dets

    def record_fields(self, img: ImageState, dets: Detections | None, rows=None) -> dict:
        """The task's own fields of an image's record (none for detection); those of its
        running merge (segmentation's) when it had one. ``rows``: the ``--embed-file``
        writer an ``embed`` job's vectors go to (``Task.record_fields``). A cached image's
        embeddings are the entry's (one per tile)."""
        embeddings = img.embeddings
        cached = img.info.cached
        if cached is not None and cached.embeddings is not None:
            embeddings = dict(enumerate(cached.embeddings))
        kw = {"rows": rows} if rows is not None and self.task_settings.embed else {}
        out = self.task.record_fields(self.task_settings, dets, embeddings, self.labels,
                                      self.settings["score_threshold"], **kw)
        if img.fields is not None and img.error is None:
            out.update(img.fields)
        return out

    def withdraw(self, image: str) -> bool:
        """Forget an image not yet complete, and what arrived for it: it no longer counts
        in progress. False when there was nothing to forget."""
        early = self.take_early(image)
        img = self.images.pop(image, None)
        if img is None:
            return bool(early)
        if img.merging is not None:  # its partial mask goes
            img.merging.abort()
            img.merging = None
        if img.again:  # counted, and done, the first time: no longer part of the job
            self.images_done -= 1
        self.images_seen -= 1
        self.tiles_seen -= img.info.tiles
        self.tiles_done -= len(img.parts)
        if img.info.cached is not None:
            self.images_cached -= 1
        self.dirty = True
        return True

    # ------------------------------------------------------------------ the job

    def end(self, msg: protocol.JobEnd) -> None:
        """The job's totals, once they agree with what was announced: ProtocolError (and
        nothing changes) when the count differs, since a total below the images announced
        would end the job before they are written, and one above would never end it."""
        if msg.images != self.images_seen:
            raise protocol.ProtocolError(
                f"job {self.id}: end refused: it counts {msg.images} images, "
                f"{self.images_seen} were announced and not withdrawn")
        self.images_total = msg.images
        self.tiles_total = msg.tiles
        self.dirty = True

    def is_complete(self) -> bool:
        return self.images_total is not None and self.images_done >= self.images_total

    def progress(self) -> protocol.Progress:
        return protocol.Progress(
            job=self.id,
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
            live=self.live is not None,
            lag=None if self.live is None else self.live.lag,
            backlog=None if self.live is None else self.live.backlog,
            dropped=0 if self.live is None else self.live.dropped,
            stage2=None if self.stage2 is None else self.stage2.kind,
            objects_seen=self.objects_seen,
            objects_done=self.objects_done,
        )
