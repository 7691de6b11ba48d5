"""The inference engine: one compiled model behind OpenVINO's ``AsyncInferQueue``.

OpenVINO completes requests on its own threads. Their callback decodes the outputs (numpy,
small; how is the model's task's, ``zmqvision.tasks``) and hands the result over through a
queue, then wakes the socket thread through a pipe that its ZeroMQ poller watches, so
completions are sent at once without busy polling.
Only the socket thread calls ``start`` and ``completed``; ``in_flight`` is its count.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from zmqvision import protocol, sockets, tasks
from zmqvision.boxes import Detections
from zmqvision.worker.batch import BatchClock, BatchSlice, Gathering, TileBatch
from zmqvision.worker.config import WorkerConfig

log = logging.getLogger("zmqvision.worker")


class Completion(NamedTuple):
    """A finished tile: its detections (a classifier's: its top-k classes) in image
    coordinates and its embedding if it asked for one, or the error that stopped it."""

    src: int  # the ventilator it came from (index of its DEALER)
    tile: protocol.Tile
    t0: float  # time.perf_counter() when it started
    detections: Detections | None
    error: Exception | None
    embedding: np.ndarray | None = None
    scores: np.ndarray | None = None  # a segmenter's valid score map [h, w, C]
    batch: TileBatch | None = None  # the batch it ran in (--batch): the engine's books


def direct_start(ov, queue) -> Callable[[object, object], None]:
    """``queue.start_async`` for one ``ov.Tensor`` input, without OpenVINO's Python data
    dispatcher: the public ``AsyncInferQueue.start_async`` wraps an idle request in a new
    Python object and sends its inputs through the dispatcher's type dispatch on every
    call, ~0.05-0.1 ms of the worker's CPU per tile, only to pass an ``ov.Tensor`` on
    as it is. Its compiled base class (``openvino._pyopenvino``) takes the tensor
    directly, as the dispatcher would have given it (the same request, the same tensor,
    no copy). Where a future OpenVINO has no such base, the public method is used."""
    base = next((c for c in type(queue).__mro__[1:] if "start_async" in vars(c)), None)
    if base is not None and type(queue).__module__.startswith("openvino") and \
            base.__module__.startswith("openvino._pyopenvino"):
        return base.start_async.__get__(queue)
    return queue.start_async


def default_requests(optimal: int, batch: int = 1) -> int:
    """Infer requests a worker runs when not told (``--requests``): a tile queued behind
    the running one on each of the device's ``optimal`` streams, and one more.

    A request freed by a finished tile is refilled only after a credit round trip
    (the worker's Ready, the ventilator's cut, the tile back). On 2 busy cores that trip
    took about 6 ms (median; 15 ms p90) against 8 ms for a classifier tile on a stream, so
    with ``optimal + 1`` requests a stream idled while its next tile was on its way:
    efficientnet-lite0 kept 1.3 of 3 requests busy and ran at 0.31 of benchmark_app.
    The queued tiles wait inside OpenVINO, which starts one the moment a stream frees
    (docs/performance.md, "Classification: why the worker starved"). A batch (``batch``
    > 1) already holds ``batch`` tiles per request, so it keeps ``optimal + 1``."""
    if batch > 1:
        return optimal + 1
    return 2 * optimal + 1


class InferenceEngine:
    """Starts tiles on the device and hands back their completions to the socket thread.

    ``requests`` is how many tiles it holds at most (its credit, its heartbeat's
    ``requests``): its infer requests (``infer_requests``) times the tiles each runs at
    once (``batch``; a batch holds N tiles of credit)."""

    def __init__(self, config: WorkerConfig, stop: sockets.StopFlag) -> None:
        from zmqvision.models import ensure, load_network, resolve
        from zmqvision.models.runtime import BatchError
        from zmqvision.openvino_import import import_openvino

        ov = import_openvino()
        self.spec = resolve(config.model, config.input_size, config.task)
        self.task = tasks.get(self.spec.task)
        self.batch = config.batch
        model_path = ensure(self.spec, log=lambda m: log.info("%s", m))
        # A Detector or a Classifier (models.runtime), or a Segmenter (segment.runtime), as
        # the model's task needs.
        kwargs = {"device": config.device, "threads": config.threads, "hint": config.hint,
                  "model_path": model_path}
        if self.spec.task == "segmentation":
            if self.batch > 1:
                raise BatchError(f"model {self.spec.ref}: --batch is for detection and "
                                 "classification models; run segmentation without it")
            from zmqvision.segment.runtime import Segmenter

            self.detector = Segmenter(self.spec, **kwargs)
        else:
            if self.batch > 1:
                kwargs["batch"] = self.batch
            self.detector = load_network(self.spec, **kwargs)
        self.infer_requests = config.requests or default_requests(
            self.detector.optimal_requests(), self.batch)
        self.requests = self.infer_requests * self.batch
        w, h = self.detector.input_size
        self.input_shape = (h, w, 3)
        self.score_threshold = config.score_threshold
        self.in_flight = 0  # started, completion not yet taken by the socket thread
        self._done: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        # Completions and SIGTERM wake the socket loop at once (a stop waited 0.3 s without).
        self.wake = sockets.WakePipe(stop)
        self._queue = ov.AsyncInferQueue(self.detector.compiled, self.infer_requests)
        self._start_async = direct_start(ov, self._queue)
        self._gathering: Gathering | None = None
        self._clock: BatchClock | None = None
        self._batches = 0  # batches on the device, not every completion yet taken
        self.batch_sizes: Counter[int] = Counter()  # batches sent, by tiles (the log's)
        if self.batch > 1:
            self._gathering = Gathering(self.batch, config.batch_wait_ms / 1000.0)
            self._clock = BatchClock(self.wake)
            self._queue.set_callback(self._batch_completed)
        else:
            self._queue.set_callback(self._completed)

    def has_room(self) -> bool:
        if self._gathering is not None and self._gathering.full:
            return False  # every request busy and a full batch waiting for one
        return self.in_flight < self.requests

    def refusal(self, tile: protocol.Tile) -> tuple[str, str] | None:
        """Why this tile cannot run here, as an error (type, message); None if it can."""
        if tile.model != self.spec.ref:
            return "model_mismatch", f"tile cut for {tile.model}, this worker runs {self.spec.ref}"
        if tile.pixels.shape != self.input_shape:
            return "bad_tile", f"tile is {tile.pixels.shape}, model input is {self.input_shape}"
        return None

    def start(self, src: int, tile: protocol.Tile) -> None:
        """Start a tile (there must be room). Raises what OpenVINO raised, counting nothing.

        With a batch, the tile joins the gathering instead, which goes to the device when
        due (``_send_due``); what OpenVINO then raises comes back as every one of its
        tiles' completion."""
        if self._gathering is None:
            self._start_async(self.detector.input_tensor(tile.pixels),
                              (src, tile, time.perf_counter()))
            self.in_flight += 1
            return
        if self._gathering.add(src, tile, time.perf_counter()):
            self._clock.arm(self._gathering.deadline)
        self.in_flight += 1
        self._send_due(time.monotonic())

    def _send_due(self, now: float, drain: bool = False) -> None:
        """Send the gathering if it is due (``drain``: if it holds any tile) and an infer
        request is free (``_batches``: none ever waits in ``start_async``)."""
        g = self._gathering
        if g is None or not len(g) or self._batches >= self.infer_requests:
            return
        if not (drain or g.due(now)):
            return
        batch = g.take()
        self._batches += 1
        self.batch_sizes[len(batch)] += 1
        try:
            batch.tensor = self.detector.batch_tensor(batch.pixels())
            self._start_async(batch.tensor, batch)
        except Exception as exc:  # every tile of it answered with the error, none lost
            self._batches -= 1
            batch.left = 0
            for src, tile, t0 in batch.items:
                self._deliver(Completion(src, tile, t0, None, exc))

    def _taken(self, c: Completion) -> Completion:
        """Book a completion the socket thread took; a batch whose last tile this is frees
        its request, and a gathering that was waiting for one may go now."""
        self.in_flight -= 1
        b = c.batch
        if b is not None:
            b.left -= 1
            if b.left == 0:
                self._batches -= 1
                self._send_due(time.monotonic())
        return c

    def completed(self) -> Iterator[Completion]:
        """The completions that are ready now (and a gathering sent if its wait ended)."""
        self._send_due(time.monotonic())
        while True:
            try:
                c = self._done.get_nowait()
            except queue.Empty:
                return
            yield self._taken(c)

    def wait_completion(self, timeout: float) -> Completion | None:
        """The next completion, waiting up to ``timeout`` s (a clean stop's drain: a
        gathering goes at once, no more tiles will come to fill it)."""
        self._send_due(time.monotonic(), drain=True)
        try:
            c = self._done.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        return self._taken(c)

    def _completed(self, request, userdata) -> None:  # on an OpenVINO thread
        src, tile, t0 = userdata
        threshold = tile.min_score if tile.min_score is not None else self.score_threshold
        try:
            out = self.task.decode(self.detector, request, tile, threshold)
            c = Completion(src, tile, t0, out.detections, None, out.embedding, out.scores)
        except Exception as exc:  # reported as this tile's error, never lost
            c = Completion(src, tile, t0, None, exc)
        self._deliver(c)

    def _batch_completed(self, request, batch: TileBatch) -> None:  # on an OpenVINO thread
        """A batch's tiles decoded one by one, each from its own rows of the outputs
        (``BatchSlice``), exactly as ``_completed`` decodes a lone tile's request."""
        for k, (src, tile, t0) in enumerate(batch.items):
            threshold = tile.min_score if tile.min_score is not None else self.score_threshold
            try:
                out = self.task.decode(self.detector, BatchSlice(request, k), tile, threshold)
                c = Completion(src, tile, t0, out.detections, None, out.embedding,
                               out.scores, batch)
            except Exception as exc:  # reported as this tile's error, never lost
                c = Completion(src, tile, t0, None, exc, batch=batch)
            self._deliver(c)

    def _deliver(self, c: Completion) -> None:
        self._done.put(c)
        self.wake.wake()

    def close(self) -> None:
        """Wait for the device to finish (no callback may run after), then drop the pipe."""
        if self._clock is not None:
            self._clock.close()
            log.info("batches sent, by tiles: %s", dict(sorted(self.batch_sizes.items())))
        with contextlib.suppress(Exception):
            self._queue.wait_all()
        self.wake.close()
