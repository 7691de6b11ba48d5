"""The worker: PULL tiles, infer with OpenVINO's async queue, PUSH small results.

Only one thread touches the sockets. OpenVINO completes requests on its own threads; their
callback decodes (numpy, small) and hands the result over through a queue, and wakes the
socket loop through a pipe that the ZeroMQ poller watches, so completions are sent at once
without busy polling. A tile is received only when an infer request is free: the tiles a
busy worker has not started stay queued at the ventilator (bounded by the high-water marks)
instead of piling up here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import time
import uuid
from dataclasses import dataclass

import zmq

from zmqvision import protocol, sockets
from zmqvision.boxes import Detections
from zmqvision.tiling import to_image_coords

log = logging.getLogger("zmqvision.worker")


@dataclass(frozen=True)
class WorkerConfig:
    tiles: str = sockets.connect_endpoint(sockets.TILES_PORT)  # comma-separated for several
    results: str = sockets.connect_endpoint(sockets.RESULTS_PORT)
    model: str = "centerface"
    input_size: tuple[int, int] | None = None
    device: str = "CPU"
    threads: int | None = None
    hint: str = "THROUGHPUT"
    requests: int | None = None  # in-flight infer requests; None = the device's optimum + 1
    score_threshold: float | None = None
    heartbeat_s: float = 1.0
    worker_id: str | None = None


def _new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def _tile_error(tile: protocol.Tile, worker: str, model: str, kind: str, message: str):
    return protocol.Result(
        job=tile.job,
        image=tile.image,
        index=tile.index,
        worker=worker,
        model=model,
        detections=Detections.empty(),
        error={"type": kind, "message": message},
        attempt=tile.attempt,
    )


class _Rate:
    """Tiles per second, exponentially smoothed over roughly the last few seconds."""

    def __init__(self) -> None:
        self.value = 0.0
        self._last_t = time.monotonic()
        self._last_n = 0

    def update(self, n: int) -> float:
        now = time.monotonic()
        dt = now - self._last_t
        if dt >= 0.5:
            inst = (n - self._last_n) / dt
            self.value = inst if self.value == 0 else 0.5 * self.value + 0.5 * inst
            self._last_t, self._last_n = now, n
        return self.value


def run_worker(
    config: WorkerConfig,
    stop: sockets.StopFlag | None = None,
    on_ready=None,
) -> int:
    """Serve tiles until ``stop`` is set. Returns a process exit code."""
    import openvino as ov

    from zmqvision.models import Detector, ensure, resolve

    stop = stop or sockets.StopFlag()
    spec = resolve(config.model)
    if config.input_size is not None:
        spec = spec.with_input_size(*config.input_size)
    model_path = ensure(spec, log=lambda m: log.info("%s", m))
    detector = Detector(
        spec, device=config.device, threads=config.threads, hint=config.hint, model_path=model_path
    )
    worker_id = config.worker_id or _new_worker_id()
    # One request more than the device's optimum: while Python hands a finished tile over
    # and starts the next, the device still has a tile queued (measured +10 % on 2 cores).
    n_requests = config.requests or detector.optimal_requests() + 1
    expected_shape = (detector.input_size[1], detector.input_size[0], 3)

    done: queue.SimpleQueue = queue.SimpleQueue()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)

    def completed(request, userdata) -> None:
        tile, t0 = userdata
        threshold = tile.min_score if tile.min_score is not None else config.score_threshold
        try:
            dets = detector.decode(detector.outputs_of(request), threshold)
            done.put((tile, t0, dets, None))
        except Exception as exc:  # reported as this tile's error, never lost
            done.put((tile, t0, None, exc))
        with contextlib.suppress(OSError):
            os.write(wake_w, b"x")

    infer_queue = ov.AsyncInferQueue(detector.compiled, n_requests)
    infer_queue.set_callback(completed)

    ctx = zmq.Context()
    pull = sockets.make_socket(ctx, zmq.PULL, rcvhwm=2, maxmsgsize=64 << 20)
    push = sockets.make_socket(ctx, zmq.PUSH, sndhwm=10_000, linger=5000)
    bad = sockets.BadMessages(f"worker {worker_id}")
    counters = {"done": 0, "failed": 0}
    in_flight = 0
    started = time.monotonic()
    rate = _Rate()
    next_beat = 0.0

    def send_result(result: protocol.Result) -> None:
        sockets.send_blocking(push, protocol.encode(result), None, copy=True)

    def flush_completed() -> int:
        nonlocal in_flight
        n = 0
        while True:
            try:
                tile, t0, dets, exc = done.get_nowait()
            except queue.Empty:
                break
            n += 1
            in_flight -= 1
            if exc is not None:
                counters["failed"] += 1
                send_result(_tile_error(tile, worker_id, spec.ref, "inference_failed", str(exc)))
                continue
            boxes = to_image_coords(dets.boxes, tile.box, tile.scale)
            counters["done"] += 1
            send_result(
                protocol.Result(
                    job=tile.job,
                    image=tile.image,
                    index=tile.index,
                    worker=worker_id,
                    model=spec.ref,
                    detections=Detections(boxes, dets.scores, dets.labels),
                    attempt=tile.attempt,
                    infer_ms=(time.perf_counter() - t0) * 1000.0,
                )
            )
        return n

    def beat() -> None:
        hb = protocol.Heartbeat(
            worker=worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            device=config.device,
            model=spec.ref,
            tiles_done=counters["done"],
            tiles_failed=counters["failed"],
            tiles_per_s=rate.update(counters["done"]),
            in_flight=in_flight,
            queue=0,  # tiles start the moment they are received
            uptime=time.monotonic() - started,
            period=config.heartbeat_s,
            requests=n_requests,
        )
        sockets.try_send(push, protocol.encode(hb))

    def start_tile(tile: protocol.Tile) -> None:
        nonlocal in_flight
        if tile.model != spec.ref:
            counters["failed"] += 1
            send_result(
                _tile_error(
                    tile,
                    worker_id,
                    spec.ref,
                    "model_mismatch",
                    f"tile cut for {tile.model}, worker {worker_id} runs {spec.ref}",
                )
            )
            return
        if tile.pixels.shape != expected_shape:
            counters["failed"] += 1
            send_result(
                _tile_error(
                    tile,
                    worker_id,
                    spec.ref,
                    "bad_tile",
                    f"tile is {tile.pixels.shape}, model input is {expected_shape}",
                )
            )
            return
        in_flight += 1
        try:
            infer_queue.start_async(
                {0: detector.input_tensor(tile.pixels)}, (tile, time.perf_counter())
            )
        except Exception as exc:
            in_flight -= 1
            counters["failed"] += 1
            send_result(_tile_error(tile, worker_id, spec.ref, "inference_failed", str(exc)))

    try:
        for endpoint in config.tiles.split(","):
            pull.connect(endpoint.strip())  # several ventilators may feed one worker
        push.connect(config.results)
        log.info(
            "worker %s: %s on %s, %d requests, tiles from %s, results to %s",
            worker_id, spec.ref, config.device, n_requests, config.tiles, config.results,
        )
        if on_ready is not None:
            on_ready(worker_id)
        poller = zmq.Poller()
        poller.register(wake_r, zmq.POLLIN)
        pull_registered = False
        while not stop.is_set():
            want_tiles = in_flight < n_requests
            if want_tiles and not pull_registered:
                poller.register(pull, zmq.POLLIN)
                pull_registered = True
            elif not want_tiles and pull_registered:
                poller.unregister(pull)
                pull_registered = False
            now = time.monotonic()
            if now >= next_beat:
                beat()
                next_beat = now + config.heartbeat_s
            timeout = max(1, int((next_beat - now) * 1000))
            events = dict(poller.poll(min(timeout, 200)))
            if wake_r in events:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            flush_completed()
            if pull_registered and events.get(pull):
                # Take every tile that is ready while requests are free.
                while in_flight < n_requests:
                    try:
                        frames = pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        msg = protocol.decode(frames, (protocol.MsgType.TILE,))
                    except protocol.ProtocolError as exc:
                        bad(exc)
                        continue
                    start_tile(msg)  # type: ignore[arg-type]
        # Finish what was started so no result is lost on a clean stop.
        infer_queue.wait_all()
        flush_completed()
        beat()
        return 0
    finally:
        with contextlib.suppress(Exception):
            infer_queue.wait_all()
        pull.close(linger=0)
        push.close()
        ctx.term()
        os.close(wake_r)
        os.close(wake_w)
