"""The worker's second stage, asynchronous like the first: each crop (a stage-2 tile) starts
on an infer request of the second model's own ``AsyncInferQueue``; OpenVINO's callback
decodes it and hands it to the socket thread through a queue and a wake pipe, as
``worker.engine.InferenceEngine`` does for stage-1 tiles.

Before this, a crop ran synchronously in the loop (``Stage2Runner.answer``): while it ran
(a text line ~10-20 ms), stage-1 completions, credit and heartbeats waited behind it, and
the device had no stage-1 tile queued. Only the socket thread calls ``start``,
``completed`` and ``wait_completion``; ``in_flight`` is its count.
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
    crop never waits for a request (``has_room`` says so all the same)."""

    def __init__(self, runner: Stage2Runner, requests: int,
                 stop: sockets.StopFlag | None = None) -> None:
        from zmqvision.openvino_import import import_openvino
        from zmqvision.recognition.runtime import u8_tensor

        ov = import_openvino()
        self.runner = runner
        self.requests = max(1, requests)
        self.in_flight = 0  # started, completion not yet taken by the socket thread
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
        """Start a crop (there must be room). Raises what its input or OpenVINO raised
        (the caller answers the tile's error), counting nothing."""
        pixels = self.runner.inputs(tile.pixels)
        # The tensor shares ``pixels``' memory: the userdata keeps it alive until done.
        self._start_async(self._tensor(pixels), (src, tile, time.perf_counter(), pixels))
        self.in_flight += 1

    def _completed(self, request, userdata) -> None:  # on an OpenVINO thread
        src, tile, t0, _ = userdata
        try:
            done = Stage2Done(src, tile, t0,
                              self.runner.decode(request.get_output_tensor(0).data), None)
        except Exception as exc:  # reported as this crop's error, never lost
            done = Stage2Done(src, tile, t0, None, exc)
        self._done.put(done)
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
        try:
            done = self._done.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        self.in_flight -= 1
        return done

    def close(self) -> None:
        """Wait for the requests to finish (no callback may run after), then drop the
        pipe."""
        with contextlib.suppress(Exception):
            self._queue.wait_all()
        self.wake.close()
