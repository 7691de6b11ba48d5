"""Results to the sink: what a finished or refused tile becomes, and the PUSH that carries it.

A send waits for room (the PUSH queue is full while the sink is slow or gone) but never
past a stop: once the worker is told to stop, it waits ``drain_s`` more for the sink, then
gives up on what cannot go, so SIGTERM ends a worker whose sink is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import zmq

from zmqvision import protocol, sockets
from zmqvision.boxes import Detections
from zmqvision.worker.engine import Completion

log = logging.getLogger("zmqvision.worker")


def tile_error(tile: protocol.Tile, worker: str, model: str, kind: str,
               message: str) -> protocol.Result:
    """A tile this worker could not infer, answered so its image still completes."""
    return named_error(tile.job, tile.image, tile.index, tile.attempt, worker, model, kind,
                       message)


def named_error(job: str, image: str, index: int, attempt: int, worker: str, model: str,
                kind: str, message: str) -> protocol.Result:
    """An error result for a tile known by its ids alone (one whose message did not
    decode, or one never cut from its image)."""
    return protocol.Result(
        job=job, image=image, index=index, worker=worker, model=model,
        detections=Detections.empty(), error={"type": kind, "message": message},
        attempt=attempt,
    )


def tile_result(c: Completion, worker: str, model: str) -> protocol.Result:
    """A finished tile's result: its detections, which the task's decoder already put into
    image coordinates (``zmqvision.tasks``), and a classifier's embedding if asked for."""
    tile, dets = c.tile, c.detections
    if c.error is not None or dets is None:
        return tile_error(tile, worker, model, "inference_failed", str(c.error))
    return protocol.Result(
        job=tile.job, image=tile.image, index=tile.index, worker=worker, model=model,
        detections=dets, attempt=tile.attempt,
        infer_ms=(time.perf_counter() - c.t0) * 1000.0, embedding=c.embedding,
        scores=c.scores,
    )


class ResultSender:
    """The PUSH socket to the sink: results wait for room, never past a stop and a drain."""

    def __init__(self, ctx: zmq.Context, endpoint: str, stop: sockets.StopFlag, *,
                 drain_s: float = 5.0) -> None:
        self.sock = sockets.make_socket(ctx, zmq.PUSH, sndhwm=10_000, linger=5000)
        self.endpoint = endpoint
        self.stop = stop
        self.drain_s = drain_s
        self.unsent = 0  # results given up on: the sink took nothing until the drain ended
        self._give_up_at: float | None = None

    def connect(self) -> None:
        self.sock.connect(self.endpoint)

    def send(self, result: protocol.Result) -> bool:
        """Queue a result for the sink; False if given up on (stopped, the sink gone)."""
        frames = protocol.encode(result)
        try:
            sockets.send_now(self.sock, frames)
            return True
        except zmq.Again:
            return self._wait_for_room(frames)

    def _wait_for_room(self, frames: Sequence) -> bool:
        while True:
            if self.stop.is_set():
                now = time.monotonic()
                if self._give_up_at is None:
                    self._give_up_at = now + self.drain_s
                if now >= self._give_up_at:
                    self.unsent += 1
                    return False
            self.sock.poll(100, zmq.POLLOUT)
            try:
                sockets.send_now(self.sock, frames)
                return True
            except zmq.Again:
                pass

    def try_send(self, frames: Sequence) -> bool:
        """For what may be dropped (heartbeats)."""
        return sockets.try_send(self.sock, frames)

    def close(self) -> None:
        if self.unsent:
            log.warning("%d results not sent: the sink at %s took none for %.0f s after the "
                        "stop", self.unsent, self.endpoint, self.drain_s)
        # Given up: the sink is gone, lingering would only hold the exit.
        self.sock.close(linger=0 if self.unsent else None)
