"""The worker's second stage, asynchronous like the first: each crop (a stage-2 tile) starts
on an infer request of the second model's own ``AsyncInferQueue``; OpenVINO's callback
decodes it and hands it to the socket thread through a queue and a wake pipe, as
``worker.engine.InferenceEngine`` does for stage-1 tiles.

Before this, a crop ran synchronously in the loop (``Stage2Runner.answer``): while it ran
(a text line ~10-20 ms), stage-1 completions, credit and heartbeats waited behind it, and
the device had no stage-1 tile queued. Only the socket thread calls ``start``, ``flush``,
``completed`` and ``wait_completion``; ``in_flight`` is its count.

MobileFaceNet's batch is fixed at 2 (``Stage2Runner.per_request``): where the loop has two
face crops queued it starts them on ONE request (``start`` holds the first, the second
starts both), and ``flush`` — called by the loop once it has started what it received —
starts a crop still held alone, paired with a copy of itself as before. A lone face never
waits for a partner that has not arrived. Row k of a pair is bit-identical to the face
embedded alone (tests/test_faces_pairs.py), so the answers do not change; the inferences
are halved where faces come in numbers.
"""

from __future__ import annotations

import contextlib
import queue
import time
from typing import NamedTuple

from zmqvision import protocol, sockets
from zmqvision.tasks.stage2 import Answer, Stage2Runner
from zmqvision.worker.engine import direct_start


class Stage2Done(NamedTuple):
    """A crop answered (``answer``: embedding, text, text score), or the error that
    stopped it."""

    src: int  # the ventilator it came from (index of its DEALER)
    tile: protocol.Tile
    t0: float  # time.perf_counter() when it started
    answer: Answer | None
    error: Exception | None


class SecondStage:
    """A ``Stage2Runner``'s model behind ``requests`` infer requests of its own.

    ``requests`` is the worker's credit: a ventilator never has more tiles out to it, so a
    crop never waits for a request (``has_room`` says so all the same; a crop held for a
    partner counts as in flight). ``pairs=False`` starts every crop on a request of its
    own (each face with a copy of itself: the behaviour before pairing, which
    benchmarks/recognition.py compares against)."""

    def __init__(self, runner: Stage2Runner, requests: int,
                 stop: sockets.StopFlag | None = None, *, pairs: bool = True) -> None:
        from zmqvision.openvino_import import import_openvino
        from zmqvision.recognition.runtime import u8_tensor

        ov = import_openvino()
        self.runner = runner
        self.requests = max(1, requests)
        self.per_request = max(1, getattr(runner, "per_request", 1)) if pairs else 1
        self.in_flight = 0  # started or held, completion not yet taken by the socket thread
        self.inferences = 0  # requests started (a pair is one)
        self._held: list[tuple[int, protocol.Tile, float]] = []  # waiting for a partner
        self._tensor = u8_tensor
        self._done: queue.SimpleQueue[Stage2Done] = queue.SimpleQueue()
        self.wake = sockets.WakePipe(stop)
        self._queue = ov.AsyncInferQueue(runner.compiled, self.requests)
        self._start_async = direct_start(ov, self._queue)
        self._queue.set_callback(self._completed)

    @property
    def ref(self) -> str:
        return self.runner.ref

    def has_room(self) -> bool:
        return self.in_flight < self.requests

    def start(self, src: int, tile: protocol.Tile) -> None:
        """Start a crop (there must be room), or hold it for the next one to share its
        request (``flush`` starts it alone). Raises what its input or OpenVINO raised
        (the caller answers the tile's error), counting nothing; a crop held before it
        that OpenVINO then refuses comes back as its error from ``completed``."""
        t0 = time.perf_counter()
        if self.per_request == 1:
            self._launch([(src, tile, t0)])
            self.in_flight += 1
            return
        self.runner.inputs_of([tile.pixels])  # refuse a bad crop now, not with its partner
        items = [*self._held, (src, tile, t0)]
        if len(items) < self.per_request:
            self._held = items
            self.in_flight += 1
            return
        self._held = []
        try:
            self._launch(items)
        except Exception as exc:
            self._fail(items[:-1], exc)  # the held ones: counted already, answered as errors
            raise
        self.in_flight += 1

    def flush(self) -> None:
        """Start a crop held for a partner alone (the loop has no other crop for now)."""
        if not self._held:
            return
        items, self._held = self._held, []
        try:
            self._launch(items)
        except Exception as exc:  # counted already: answered as their errors
            self._fail(items, exc)

    def _launch(self, items: list[tuple[int, protocol.Tile, float]]) -> None:
        pixels = self.runner.inputs_of([tile.pixels for _, tile, _ in items])
        # The tensor shares ``pixels``' memory: the userdata keeps it alive until done.
        self._start_async(self._tensor(pixels), (items, pixels))
        self.inferences += 1

    def _fail(self, items, exc: Exception) -> None:
        for src, tile, t0 in items:
            self._done.put(Stage2Done(src, tile, t0, None, exc))
        self.wake.wake()

    def _completed(self, request, userdata) -> None:  # on an OpenVINO thread
        items, _ = userdata
        try:
            answers = self.runner.decode_of(request.get_output_tensor(0).data, len(items))
            done = [Stage2Done(src, tile, t0, a, None)
                    for (src, tile, t0), a in zip(items, answers, strict=True)]
        except Exception as exc:  # reported as each crop's error, never lost
            done = [Stage2Done(src, tile, t0, None, exc) for src, tile, t0 in items]
        for d in done:
            self._done.put(d)
        self.wake.wake()

    def completed(self) -> list[Stage2Done]:
        """The crops answered by now."""
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        self.in_flight -= len(out)
        return out

    def wait_completion(self, timeout: float) -> Stage2Done | None:
        """The next crop answered, waiting up to ``timeout`` s (a clean stop's drain)."""
        self.flush()  # a held crop would otherwise never complete
        try:
            done = self._done.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        self.in_flight -= 1
        return done

    def close(self) -> None:
        """Start a crop still held, wait for the requests to finish (no callback may run
        after), then drop the pipe."""
        with contextlib.suppress(Exception):
            self.flush()
            self._queue.wait_all()
        self.wake.close()
