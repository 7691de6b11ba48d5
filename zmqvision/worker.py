"""The worker: ask ventilators for tiles, infer with OpenVINO's async queue, PUSH small
results to the sink.

Each ventilator is reached through a DEALER socket. The worker offers credit (``Ready``):
at first one tile per infer request, then one more per tile finished, so it only ever holds
what it can start (load follows speed). Heartbeats go every period, from this loop, to the
sink (for watchers) and to every ventilator (which declares the worker dead, and sends its
tiles to others, when they stop).

Only one thread touches the sockets. OpenVINO completes requests on its own threads; their
callback decodes (numpy, small) and hands the result over through a queue, and wakes the
socket loop through a pipe that the ZeroMQ poller watches, so completions are sent at once
without busy polling. On SIGTERM the worker takes no new tiles, finishes the ones it holds,
sends their results and says ``Bye``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import queue
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass

import zmq

from zmqvision import protocol, security, sockets
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
    throttle_ms: float = 0.0  # tests only: hold each result this long (a slow device)
    curve: str | None = None  # key directory: CURVE on every socket (security.py)


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
    ctx: zmq.Context | None = None,
) -> int:
    """Serve tiles until ``stop`` is set. Returns a process exit code.

    ``ctx`` is given when the worker is a thread of a process that also runs the
    ventilator and the sink (``inproc://`` endpoints need one shared context); the caller
    then owns it.
    """
    from zmqvision.models import Detector, ensure, resolve
    from zmqvision.openvino_import import import_openvino

    ov = import_openvino()

    stop = stop or sockets.StopFlag()
    if config.curve is not None:  # missing keys: say so before compiling a model
        security.Curve.load(config.curve, binds=False, connects=True)
    spec = resolve(config.model, config.input_size)
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
    # Completions and SIGTERM wake the socket loop at once (a stop waited 0.3 s without).
    wake = sockets.WakePipe(stop)

    def completed(request, userdata) -> None:
        src, tile, t0 = userdata
        threshold = tile.min_score if tile.min_score is not None else config.score_threshold
        try:
            dets = detector.decode(detector.outputs_of(request), threshold)
            done.put((src, tile, t0, dets, None))
        except Exception as exc:  # reported as this tile's error, never lost
            done.put((src, tile, t0, None, exc))
        wake.wake()

    infer_queue = ov.AsyncInferQueue(detector.compiled, n_requests)
    infer_queue.set_callback(completed)

    own_ctx = ctx is None
    ctx = ctx if ctx is not None else zmq.Context()
    endpoints = [e.strip() for e in config.tiles.split(",") if e.strip()]
    dealers = []
    for _ in endpoints:
        d = sockets.make_socket(ctx, zmq.DEALER, rcvhwm=100, sndhwm=1000,
                                maxmsgsize=64 << 20)
        d.setsockopt(zmq.ROUTING_ID, worker_id.encode())
        dealers.append(d)
    push = sockets.make_socket(ctx, zmq.PUSH, sndhwm=10_000, linger=5000)
    bad = sockets.BadMessages(f"worker {worker_id}")
    counters = {"done": 0, "failed": 0}
    waiting: deque[tuple[int, protocol.Tile]] = deque()  # received, not yet started
    held: list = []  # throttled results: (release time, seq, item)
    seq = itertools.count()
    in_flight = 0
    started = time.monotonic()
    rate = _Rate()
    next_beat = 0.0

    def send_result(result: protocol.Result) -> None:
        sockets.send_blocking(push, protocol.encode(result), None, copy=True)

    def give_credit(src: int, n: int = 1) -> None:
        sockets.try_send(dealers[src], protocol.encode(protocol.Ready(worker_id, n)))

    def answer(src: int, result: protocol.Result, failed: bool) -> None:
        counters["failed" if failed else "done"] += 1
        send_result(result)
        give_credit(src)

    def finish(item) -> None:
        src, tile, t0, dets, exc = item
        if exc is not None:
            answer(src, _tile_error(tile, worker_id, spec.ref, "inference_failed", str(exc)),
                   True)
            return
        boxes = to_image_coords(dets.boxes, tile.box, tile.scale)
        answer(src, protocol.Result(
            job=tile.job, image=tile.image, index=tile.index, worker=worker_id,
            model=spec.ref, detections=Detections(boxes, dets.scores, dets.labels),
            attempt=tile.attempt, infer_ms=(time.perf_counter() - t0) * 1000.0,
        ), False)

    def flush_completed() -> None:
        nonlocal in_flight
        now = time.monotonic()
        while True:
            try:
                item = done.get_nowait()
            except queue.Empty:
                break
            in_flight -= 1
            heapq.heappush(held, (now + config.throttle_ms / 1000.0, next(seq), item))
        while held and held[0][0] <= now:
            finish(heapq.heappop(held)[2])

    def beat() -> None:
        hb = protocol.encode(protocol.Heartbeat(
            worker=worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            device=config.device,
            model=spec.ref,
            tiles_done=counters["done"],
            tiles_failed=counters["failed"],
            tiles_per_s=rate.update(counters["done"]),
            in_flight=in_flight + len(held),
            queue=len(waiting),
            uptime=time.monotonic() - started,
            period=config.heartbeat_s,
            requests=n_requests,
        ))
        sockets.try_send(push, hb)
        for d in dealers:
            sockets.try_send(d, hb)

    def start_waiting() -> None:
        nonlocal in_flight
        while waiting and in_flight + len(held) < n_requests:
            src, tile = waiting.popleft()
            if tile.model != spec.ref:
                answer(src, _tile_error(
                    tile, worker_id, spec.ref, "model_mismatch",
                    f"tile cut for {tile.model}, worker {worker_id} runs {spec.ref}"), True)
                continue
            if tile.pixels.shape != expected_shape:
                answer(src, _tile_error(
                    tile, worker_id, spec.ref, "bad_tile",
                    f"tile is {tile.pixels.shape}, model input is {expected_shape}"), True)
                continue
            in_flight += 1
            try:
                infer_queue.start_async({0: detector.input_tensor(tile.pixels)},
                                        (src, tile, time.perf_counter()))
            except Exception as exc:
                in_flight -= 1
                answer(src, _tile_error(tile, worker_id, spec.ref, "inference_failed",
                                        str(exc)), True)

    def receive(src: int) -> None:
        while True:
            try:
                frames = dealers[src].recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = protocol.decode(frames, (protocol.MsgType.TILE,))
            except protocol.ProtocolError as exc:
                bad(exc)
                continue
            waiting.append((src, msg))

    secured = None
    try:
        secured = security.secure(ctx, config.curve, clients=(*dealers, push))
        for d, endpoint in zip(dealers, endpoints, strict=True):
            d.connect(endpoint)
        push.connect(config.results)
        for i in range(len(dealers)):
            give_credit(i, n_requests)
        log.info(
            "worker %s: %s on %s (%s hint), %d requests, tiles from %s, results to %s",
            worker_id, spec.ref, config.device, config.hint, n_requests, config.tiles,
            config.results,
        )
        if on_ready is not None:
            on_ready(worker_id)
        poller = zmq.Poller()
        poller.register(wake.r, zmq.POLLIN)
        for d in dealers:
            poller.register(d, zmq.POLLIN)
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                beat()
                next_beat = now + config.heartbeat_s
            wait_s = next_beat - now
            if held:
                wait_s = min(wait_s, held[0][0] - now)
            events = dict(poller.poll(max(1, min(200, int(wait_s * 1000)))))
            if wake.r in events:
                wake.drain()
            flush_completed()
            for i, d in enumerate(dealers):
                if events.get(d):
                    receive(i)
            start_waiting()
        # A clean stop: finish every tile this worker holds, then say goodbye.
        deadline = time.monotonic() + 60
        while (waiting or in_flight or held) and time.monotonic() < deadline:
            start_waiting()
            infer_queue.wait_all()
            flush_completed()
            if held:
                time.sleep(max(0.0, held[0][0] - time.monotonic()))
        beat()
        for d in dealers:
            sockets.try_send(d, protocol.encode(protocol.Bye(worker_id)))
        return 0
    finally:
        with contextlib.suppress(Exception):
            infer_queue.wait_all()
        if secured is not None:
            secured.close()
        for d in dealers:
            d.close(linger=500)  # long enough for Bye, short enough to never hang
        push.close()
        if own_ctx:
            ctx.term()
        wake.close()
