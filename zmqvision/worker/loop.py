"""The worker's loop: it wires the engine, the tile link, the result sender and the
heartbeat, and is the only thread that touches the sockets."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import zmq

from zmqvision import protocol, security, sockets
from zmqvision.boxes import Detections
from zmqvision.worker.config import WorkerConfig, new_worker_id
from zmqvision.worker.engine import Completion, InferenceEngine
from zmqvision.worker.heartbeat import Heartbeats
from zmqvision.worker.images import ImageCutter, ImageDecoder
from zmqvision.worker.link import Refused, TileLink
from zmqvision.worker.results import ResultSender, named_error, tile_error, tile_result
from zmqvision.worker.stage2 import SecondStage, Stage2Done
from zmqvision.worker.train import TrainService

log = logging.getLogger("zmqvision.worker")

DRAIN_S = 60.0  # a clean stop finishes the tiles it holds for at most this long


class Worker:
    """One worker: tiles from the link start on the engine as requests free up; each
    completion (or refusal) becomes a result to the sink and one credit back.

    ``engine`` is given by callers that wrap the device (the tests' slow device); the
    worker owns it from then on and closes it."""

    def __init__(self, config: WorkerConfig, stop: sockets.StopFlag,
                 ctx: zmq.Context | None = None, engine: InferenceEngine | None = None) -> None:
        if config.curve is not None:  # missing keys: say so before compiling a model
            security.Curve.load(config.curve, binds=False, connects=True)
        self.config = config
        self.stop = stop
        self.engine = engine if engine is not None else InferenceEngine(config, stop)
        self.id = config.worker_id or new_worker_id()
        self.model = self.engine.spec.ref
        # The second stage's model (two-stage jobs' crops), asynchronous like the first:
        # its completions are answered from this loop as stage-1 completions are.
        self.stage2: SecondStage | None = None
        if config.stage2 is not None:
            from zmqvision.tasks.stage2 import Stage2Runner

            self.stage2 = SecondStage(Stage2Runner(config.stage2, device=config.device,
                                                   threads=config.threads),
                                      self.engine.requests, stop)
        self.waiting: deque[tuple[int, protocol.Tile]] = deque()  # received, not started
        # Whole images (--wire image) are decoded and cut on a thread of their own.
        self.images = ImageDecoder(ImageCutter(self.engine.task, self.engine.spec.input_size,
                                               self.model, self.id))
        self.done = 0
        self.failed = 0
        self.beats = Heartbeats(self.id, config.device, self.model, config.heartbeat_s,
                                self.engine.requests,
                                stage2=self.stage2.ref if self.stage2 is not None else None)
        self._own_ctx = ctx is None
        self.ctx = ctx if ctx is not None else zmq.Context()
        self.poller = zmq.Poller()
        self.poller.register(self.engine.wake.r, zmq.POLLIN)
        self.poller.register(self.images.wake.r, zmq.POLLIN)
        if self.stage2 is not None:
            self.poller.register(self.stage2.wake.r, zmq.POLLIN)
        self.link: TileLink | None = None
        self.results: ResultSender | None = None
        self.secured = None
        self.training = TrainService(self.ctx, self.id, self.poller, config.curve)
        try:
            self.link = TileLink(self.ctx, config.tile_endpoints(), self.id, self.poller,
                                 self.engine.requests)
            self.results = ResultSender(self.ctx, config.results, stop)
            self.secured = security.secure(self.ctx, config.curve,
                                           clients=(*self.link.dealers, self.results.sock))
            self.link.connect()
            self.results.connect()
        except BaseException:
            self.close()
            raise

    def run(self, on_ready: Callable[[str], None] | None = None) -> int:
        """Serve tiles until the stop flag is set, then finish those held and say Bye.
        Returns a process exit code."""
        self.link.send_owed()  # the first Ready, before any heartbeat
        log.info("worker %s: %s on %s (%s hint), %d requests%s, tiles from %s, results to %s",
                 self.id, self.model, self.config.device, self.config.hint,
                 self.engine.infer_requests, f" of {self.engine.batch} tiles (--batch)" * (
                     self.engine.batch > 1), self.config.tiles, self.config.results)
        if on_ready is not None:
            on_ready(self.id)
        while not self.stop.is_set():
            self._step()
        self._drain()
        self._beat()
        self.link.bye()
        return 0

    def _step(self) -> None:
        now = time.monotonic()
        wait_s = self.beats.seconds_left(now)
        if wait_s <= 0:
            self._beat()
            wait_s = self.config.heartbeat_s
        events = dict(self.poller.poll(max(1, min(200, int(wait_s * 1000)))))
        if self.engine.wake.r in events:
            self.engine.wake.drain()
        for c in self.engine.completed():
            self._finish(c)
        if self.stage2 is not None:
            if self.stage2.wake.r in events:
                self.stage2.wake.drain()
            for done in self.stage2.completed():
                self._finish_stage2(done)
        if self.images.pending or self.images.wake.r in events:
            self._take_decoded()
        for src, d in enumerate(self.link.dealers):
            if events.get(d, 0) & zmq.POLLIN:
                for msg in self.link.tiles(src):
                    kind = type(msg)
                    if kind is protocol.Tile:
                        self.waiting.append((src, msg))
                    elif kind is protocol.ImageWork:
                        self._take_image(src, msg)
                    elif kind is Refused:
                        self._answer_refused(src, msg)
                    else:
                        self.training.invite(msg)
        self.training.serve(events)
        self._start_waiting()
        # The credit freed in this step, in one Ready per ventilator (also what was owed
        # while its pipe was full), before the loop waits again.
        self.link.send_owed()

    def _start_waiting(self) -> None:
        """Start the tiles received, in order, while their stage has a request free (a
        stage-2 crop on the second model's, the others on the engine's); then a face crop
        held for a partner starts alone (``SecondStage.flush``: no wait for one)."""
        engine = self.engine
        while self.waiting:
            src, tile = self.waiting[0]
            if tile.task is not None and tile.task.get("stage") == 2:
                if self.stage2 is not None and not self.stage2.has_room():
                    break
                self.waiting.popleft()
                self._second_stage(src, tile)
                continue
            if not engine.has_room():
                break
            self.waiting.popleft()
            refusal = engine.refusal(tile)
            if refusal is not None:
                self._answer(src, tile_error(tile, self.id, self.model, *refusal), failed=True)
                continue
            try:
                engine.start(src, tile)
            except Exception as exc:
                self._answer(src, tile_error(tile, self.id, self.model, "inference_failed",
                                             str(exc)), failed=True)
        if self.stage2 is not None:
            self.stage2.flush()

    def _second_stage(self, src: int, tile: protocol.Tile) -> None:
        """A stage-2 tile (one object's crop): refused at once, or started on the second
        model (answered by ``_finish_stage2``)."""
        stage2 = self.stage2
        why = ("this worker runs no second stage (--stage2)" if stage2 is None else
               f"tile for {tile.model}, this worker's second stage is {stage2.ref}"
               if tile.model != stage2.ref else stage2.runner.refusal(tile.pixels))
        if why is not None:
            self._answer(src, tile_error(tile, self.id, tile.model, "model_mismatch", why),
                         failed=True)
            return
        try:
            stage2.start(src, tile)
        except Exception as exc:  # reported as the tile's error, never lost
            self._answer(src, tile_error(tile, self.id, stage2.ref, "inference_failed",
                                         str(exc)), failed=True)

    def _finish_stage2(self, done: Stage2Done) -> None:
        tile, ref = done.tile, self.stage2.ref
        if done.error is not None or done.answer is None:
            self._answer(done.src, tile_error(tile, self.id, ref, "inference_failed",
                                              str(done.error)), failed=True)
            return
        embedding, text, text_score = done.answer
        self._answer(done.src, protocol.Result(
            job=tile.job, image=tile.image, index=tile.index, worker=self.id,
            model=ref, detections=Detections.empty(), attempt=tile.attempt,
            infer_ms=(time.perf_counter() - done.t0) * 1000.0, embedding=embedding,
            text=text, text_score=text_score), failed=False)

    def _answer_refused(self, src: int, refused: Refused) -> None:
        """Tiles the link would not queue: each answered with its error at once (its
        image's record is an error now, not after a lease; nothing is lost silently).
        A ``bad_tile`` gives its credit back; a ``beyond_credit`` does not, since none was
        spent on it (docs/protocol.md, worker step 4)."""
        for index in refused.indices:
            result = named_error(refused.job, refused.image, index, refused.attempt, self.id,
                                 self.model, refused.error, refused.reason)
            self._answer(src, result, failed=True, credit=refused.credit_back)

    def _take_image(self, src: int, work: protocol.ImageWork) -> None:
        """A whole image: decoded and cut on the decoder's thread (``_take_decoded``)."""
        self.images.submit(src, work)

    def _take_decoded(self) -> None:
        """Decoded images' tiles queued like any others (each answered and credited on its
        own); an image that could not be decoded is answered with its error for every
        tile."""
        for src, tiles, errors in self.images.ready():
            self.waiting.extend((src, tile) for tile in tiles)
            for result in errors:
                self._answer(src, result, failed=True)

    def _finish(self, c: Completion) -> None:
        self._answer(c.src, tile_result(c, self.id, self.model), failed=c.error is not None)

    def _answer(self, src: int, result: protocol.Result, failed: bool,
                credit: bool = True) -> None:
        if failed:
            self.failed += 1
        else:
            self.done += 1
        self.results.send(result)
        if credit:
            self.link.owe(src)  # sent at the end of the step (send_owed), before any wait

    def _beat(self) -> None:
        link = self.link
        hb = self.beats.message(self.done, self.failed, self._in_flight(),
                                len(self.waiting) + self.images.tiles_pending,
                                link.tiles_beyond_credit + link.bad.count)
        self.results.try_send(hb)
        self.link.beat(hb)

    def _in_flight(self) -> int:
        """Tiles started on either stage, not answered yet."""
        return self.engine.in_flight + (self.stage2.in_flight if self.stage2 else 0)

    def _drain(self) -> None:
        """A clean stop: finish every tile this worker holds (bounded: DRAIN_S)."""
        deadline = time.monotonic() + DRAIN_S
        while self.waiting or self._in_flight() or self.images.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("worker %s: stopped with %d tiles unfinished", self.id,
                            len(self.waiting) + self._in_flight()
                            + self.images.tiles_pending)
                return
            self._take_decoded()
            self._start_waiting()
            stage2 = self.stage2
            if stage2 is not None and stage2.in_flight:
                # Crops answered now; then wait on stage 1 briefly, or on stage 2 alone.
                for done in stage2.completed():
                    self._finish_stage2(done)
                if not self.engine.in_flight:
                    done = stage2.wait_completion(min(left, 1.0))
                    if done is not None:
                        self._finish_stage2(done)
                    self.link.send_owed()
                    continue
            if not self.engine.in_flight:  # only images being decoded: wait for the next
                self.images.wait(min(left, 1.0))
                continue
            wait_s = 0.01 if stage2 is not None and stage2.in_flight else 1.0
            c = self.engine.wait_completion(min(left, wait_s))
            if c is not None:
                self._finish(c)
            self.link.send_owed()

    def close(self) -> None:
        """Close in the order that never hangs: the device first (no callback after)."""
        self.engine.close()
        if self.stage2 is not None:
            self.stage2.close()
        self.images.close()
        self.training.close()
        if self.secured is not None:
            self.secured.close()
        if self.link is not None:
            self.link.close()
        if self.results is not None:
            self.results.close()
        if self._own_ctx:
            self.ctx.term()


def run_worker(
    config: WorkerConfig,
    stop: sockets.StopFlag | None = None,
    on_ready: Callable[[str], None] | None = None,
    ctx: zmq.Context | None = None,
) -> int:
    """Serve tiles until ``stop`` is set. Returns a process exit code.

    ``ctx`` is given when the worker is a thread of a process that also runs the
    ventilator and the sink (``inproc://`` endpoints need one shared context); the caller
    then owns it.
    """
    worker = Worker(config, stop or sockets.StopFlag(), ctx)
    try:
        return worker.run(on_ready)
    finally:
        worker.close()
