"""``zmqvision worker --batch N``: real batches, against a ventilator and a sink played by
the test (real ZeroMQ sockets, the real CenterFace model, real photos from scikit-image).

A batched worker's answer for every tile must be byte for byte the unbatched model's, each
tile answered and credited on its own, a batch holding N tiles of credit; models whose
graph cannot keep a batch apart are refused by name."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import skimage.data
import zmq

from tests.test_worker import Sink, Ventilator
from zmqvision import protocol, sockets
from zmqvision.models import load_network, resolve
from zmqvision.models.runtime import BatchError
from zmqvision.tiling import to_image_coords
from zmqvision.worker import WorkerConfig
from zmqvision.worker.batch import BatchClock
from zmqvision.worker.loop import Worker

pytestmark = pytest.mark.timeout(300)

MODEL = "centerface"
SPEC = resolve(MODEL, None)
SIDE = SPEC.input_size[0]
THRESHOLD = 0.05  # low: many rows per tile, so equality says something


def photo_tiles() -> list[np.ndarray]:
    """640x640 cuts of real photos (the astronaut's face among them), zero-padded."""
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                 "cat"):
        img = getattr(skimage.data, name)()[..., :3]
        for y0 in (0, max(0, img.shape[0] - SIDE) // 2):
            t = np.zeros((SIDE, SIDE, 3), np.uint8)
            part = img[y0:y0 + SIDE, :SIDE]
            t[:part.shape[0], :part.shape[1]] = part
            out.append(t)
    return out


def tile(index: int, pixels: np.ndarray) -> protocol.Tile:
    return protocol.Tile(job="j", image="img", index=index, box=(0.0, 0.0, SIDE, SIDE),
                         scale=1.0, model=SPEC.ref, pixels=pixels)


class WorkerThread:
    """A ``Worker`` run in a thread (``inproc://``); its engine stays reachable."""

    def __init__(self, ctx: zmq.Context, config: WorkerConfig) -> None:
        self.stop = sockets.StopFlag()
        self.worker = Worker(config, self.stop, ctx)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(60), f"the worker did not start: {self.error!r}"

    def _run(self) -> None:
        try:
            self.worker.run(on_ready=lambda wid: self.ready.set())
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc
            self.ready.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the worker did not stop"
        self.worker.close()
        if self.error is not None:
            raise self.error


@pytest.fixture
def batched(ctx, request, models_ready):
    """A ventilator, a sink and a centerface worker: 2 infer requests of batch 4."""
    wait_ms = getattr(request, "param", 2.0)
    name = request.node.name.replace("[", "-").replace("]", "")
    vent = Ventilator(ctx, f"inproc://{name}-tiles")
    sink = Sink(ctx, f"inproc://{name}-results")
    worker = None
    try:
        worker = WorkerThread(ctx, WorkerConfig(
            tiles=vent.endpoint, results=sink.endpoint, model=MODEL, requests=2,
            threads=1, heartbeat_s=0.1, worker_id="wb", score_threshold=THRESHOLD,
            batch=4, batch_wait_ms=wait_ms))
        yield vent, sink, worker
    finally:
        try:
            if worker is not None:
                worker.close()
        finally:
            vent.close()
            sink.close()


def reference(pixels: list[np.ndarray]) -> list:
    """Each tile alone through the batch-1 model, as the unbatched worker decodes it."""
    det = load_network(SPEC, threads=1)
    out = []
    for p in pixels:
        d = det.infer(p, THRESHOLD)
        out.append((to_image_coords(d.boxes, (0.0, 0.0, SIDE, SIDE), 1.0), d.scores, d.labels))
    return out


def test_batched_results_are_the_unbatched_models_byte_for_byte(batched):
    vent, sink, worker = batched
    # 2 requests x 4 tiles: the Ready and the heartbeat say 8 (a batch holds 4 credits).
    vent.wait(lambda: vent.credit() == 8, 60, "initial credit of 8")
    vent.wait(lambda: vent.of_type(protocol.Heartbeat), 30, "heartbeat")
    assert vent.of_type(protocol.Heartbeat)[0].requests == 8
    pixels = photo_tiles()
    for i, p in enumerate(pixels):
        assert vent.send("wb", tile(i, p))
    results = {r.index: r for r in sink.wait_results(len(pixels), timeout=120)}
    vent.wait(lambda: vent.credit() == 8 + len(pixels), 30, "credit back for every tile")
    sizes = worker.worker.engine.batch_sizes
    assert sum(n * k for n, k in sizes.items()) == len(pixels)
    assert max(sizes) > 1, f"no real batch was formed: {dict(sizes)}"
    rows = 0
    for i, (boxes, scores, labels) in enumerate(reference(pixels)):
        r = results[i]
        assert r.error is None, r.error
        assert r.detections.boxes.tobytes() == boxes.tobytes(), i
        assert r.detections.scores.tobytes() == scores.tobytes(), i
        assert r.detections.labels.tobytes() == labels.tobytes(), i
        rows += len(scores)
    assert rows >= 3, "too few detections for the comparison to mean anything"


def test_a_lone_tile_goes_alone_after_the_wait(batched):
    vent, sink, worker = batched
    vent.wait(lambda: vent.credit() == 8, 60, "initial credit")
    assert vent.send("wb", tile(0, photo_tiles()[0]))
    (r,) = sink.wait_results(1)
    assert r.error is None and len(r.detections)
    assert dict(worker.worker.engine.batch_sizes) == {1: 1}


@pytest.mark.parametrize("batched", [1000.0], indirect=True)  # a 1 s wait
def test_a_clean_stop_sends_the_gathered_tiles_at_once_and_answers_them(batched):
    """The gathering waits 1 s for a 4th tile; a stop does not wait for it: the 3 tiles
    go, are answered and credited, and the worker says Bye."""
    vent, sink, worker = batched
    vent.wait(lambda: vent.credit() == 8, 60, "initial credit")
    pixels = photo_tiles()[:3]
    for i, p in enumerate(pixels):
        assert vent.send("wb", tile(i, p))
    vent.wait(lambda: any(h.in_flight == 3 for h in vent.of_type(protocol.Heartbeat)), 30,
              "a heartbeat counting the 3 gathered tiles in flight")
    worker.stop.set()
    results = sink.wait_results(3, timeout=60)
    assert all(r.error is None for r in results)
    vent.wait(lambda: vent.of_type(protocol.Bye), 30, "Bye")
    assert vent.credit() == 8 + 3
    assert sum(worker.worker.engine.batch_sizes.values()) >= 1


@pytest.mark.parametrize("model", ["blazeface-short", "ssd-mobilenetv2-oid",
                                   "efficientnet-lite0"])
def test_a_model_whose_graph_cannot_batch_is_refused_by_name(model, models_ready):
    """Measured, not assumed: OpenVINO refuses the reshape of the SSD and EfficientNet
    TF-Lite graphs, and BlazeFace reshapes but folds the batch into its anchors."""
    spec = resolve(model, None)
    with pytest.raises(BatchError, match=spec.ref.replace(".", r"\.")):
        load_network(spec, threads=1, batch=4)


def test_batch_must_be_positive():
    with pytest.raises(ValueError, match="batch"):
        WorkerConfig(batch=0)


def test_the_batch_clock_wakes_the_loop_when_the_wait_ends():
    pipe = sockets.WakePipe()
    clock = BatchClock(pipe)
    try:
        t0 = time.monotonic()
        clock.arm(t0 + 0.05)
        poller = zmq.Poller()
        poller.register(pipe.r, zmq.POLLIN)
        assert poller.poll(5000), "the clock never woke the pipe"
        assert time.monotonic() - t0 >= 0.045
        assert os.read(pipe.r, 16) == b"x"
    finally:
        clock.close()
        pipe.close()
