"""The worker against a ventilator and a sink played by the test: real ZeroMQ sockets and a
real OpenVINO model (BlazeFace, the smallest), the worker in a thread of this process
(``inproc://``, so high-water marks are exact) or, where a signal matters, in its own."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from tests.conftest import ROOT
from zmqvision import protocol, sockets
from zmqvision.models import resolve
from zmqvision.worker import WorkerConfig, run_worker

pytestmark = pytest.mark.timeout(180)

MODEL = "blazeface-short"
REF = resolve(MODEL, None).ref
SIDE = resolve(MODEL, None).input_size[0]


def tile(index: int, model: str = REF, side: int = SIDE) -> protocol.Tile:
    return protocol.Tile(job="j", image="img", index=index, box=(0.0, 0.0, side, side),
                         scale=1.0, model=model, pixels=np.zeros((side, side, 3), np.uint8))


class Ventilator:
    """The test's end of the tile link: a ROUTER that records what workers say (Ready,
    heartbeats, Bye, in order) and sends them tiles, waiting at its high-water mark
    (``ROUTER_MANDATORY``) rather than dropping."""

    def __init__(self, ctx: zmq.Context, endpoint: str, *, rcvhwm: int | None = None) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.sndhwm = 10
        if rcvhwm is not None:
            self.sock.rcvhwm = rcvhwm
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.endpoint = sockets.connectable(sockets.bind(self.sock, endpoint))
        self.heard: list[tuple[bytes, protocol.Message]] = []
        self.bad = sockets.BadMessages("test ventilator")

    def hear(self, timeout_ms: int = 100) -> None:
        if self.sock.poll(timeout_ms):
            for peer, msg in sockets.receive(self.sock, self.bad, routed=True):
                self.heard.append((peer.bytes, msg))

    def wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"no {what} in {timeout} s"
            self.hear()

    def credit(self) -> int:
        return sum(m.credit for _, m in self.heard if isinstance(m, protocol.Ready))

    def of_type(self, kind) -> list:
        return [m for _, m in self.heard if isinstance(m, kind)]

    def send(self, wid: str, t: protocol.Tile, timeout_ms: int = 10_000) -> bool:
        """Queue a tile for the worker; False if there was no room for ``timeout_ms``."""
        frames = [wid.encode(), *protocol.encode(t)]
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            try:
                self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if time.monotonic() > deadline:
                    return False
                self.sock.poll(20, zmq.POLLOUT)

    def close(self) -> None:
        self.sock.close(linger=0)


class Sink:
    """The test's sink: a PULL that keeps the results it is given."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.PULL)
        self.sock.linger = 0
        self.endpoint = sockets.connectable(sockets.bind(self.sock, endpoint))
        self.results: list[protocol.Result] = []
        self.bad = sockets.BadMessages("test sink")

    def wait_results(self, n: int, timeout: float = 60) -> list[protocol.Result]:
        deadline = time.monotonic() + timeout
        while len(self.results) < n:
            assert time.monotonic() < deadline, f"{len(self.results)} of {n} results"
            if self.sock.poll(100):
                self.results += [m for _, m in sockets.receive(self.sock, self.bad)
                                 if isinstance(m, protocol.Result)]
        return self.results

    def close(self) -> None:
        self.sock.close(linger=0)


class InProcessWorker:
    """``run_worker`` in a thread, on the test's context (``inproc://`` endpoints)."""

    def __init__(self, ctx: zmq.Context, config: WorkerConfig) -> None:
        self.stop = sockets.StopFlag()
        self.ready = threading.Event()
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ctx, config), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.ready.wait(0.1):
            assert self.thread.is_alive(), f"the worker ended: {self.error!r}"
            assert time.monotonic() < deadline, "the worker did not start"

    def _run(self, ctx, config) -> None:
        try:
            self.rc = run_worker(config, self.stop, on_ready=lambda wid: self.ready.set(),
                                 ctx=ctx)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def close(self) -> int | None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error
        return self.rc


@pytest.fixture
def link(ctx, request, models_ready):
    """A ventilator (or two), a sink and an in-process worker with 2 requests."""
    n_vents = getattr(request, "param", 1)
    name = request.node.name.replace("[", "-").replace("]", "")
    vents = [Ventilator(ctx, f"inproc://{name}-tiles-{i}", rcvhwm=1) for i in range(n_vents)]
    sink = Sink(ctx, f"inproc://{name}-results")
    worker = None
    try:
        worker = InProcessWorker(ctx, WorkerConfig(
            tiles=",".join(v.endpoint for v in vents), results=sink.endpoint, model=MODEL,
            requests=2, threads=1, heartbeat_s=0.1, worker_id="w1"))
        yield vents, sink, worker
    finally:
        try:
            if worker is not None:
                worker.close()
        finally:
            for v in vents:
                v.close()
            sink.close()


@pytest.mark.parametrize("link", [2], indirect=True)
def test_ready_comes_before_the_first_heartbeat_on_each_ventilator(link):
    vents, _, _ = link
    for v in vents:
        v.wait(lambda v=v: v.of_type(protocol.Heartbeat), 30, "heartbeat")
        first = v.heard[0][1]
        assert isinstance(first, protocol.Ready) and first.credit == 2, v.heard[:3]


def test_a_tile_it_cannot_use_is_answered_as_an_error_and_its_credit_comes_back(link):
    (vent,), sink, _ = link
    vent.wait(lambda: vent.credit() == 2, 30, "initial credit")
    assert vent.send("w1", tile(0, model="other-model@1", side=4))
    assert vent.send("w1", tile(1, side=SIDE // 2))
    assert vent.send("w1", tile(2))
    results = {r.index: r for r in sink.wait_results(3)}
    assert results[0].error["type"] == "model_mismatch", results[0].error
    assert results[1].error["type"] == "bad_tile", results[1].error
    assert results[2].error is None and results[2].model == REF
    vent.wait(lambda: vent.credit() == 2 + 3, 30, "credit back for every tile")


def test_credit_owed_while_the_pipe_to_the_ventilator_is_full_is_sent_later(link):
    """The ventilator reads none of its credit while it sends 3,000 tiles, each once the
    sink has all but 2 of those before it; the worker's Ready pipe (the DEALER's 1,000
    plus the ROUTER's 1) fills. Then its credit is only owed, and tiles sent beyond it
    (and the margin) are answered ``beyond_credit`` and earn none. No credit may be lost:
    once the ventilator reads again, the worker's Readies add up to its requests plus one
    per tile it ran."""
    (vent,), sink, _ = link
    vent.wait(lambda: vent.credit() == 2, 30, "initial credit")
    n = 3000
    for i in range(n):  # answered at once: a model mismatch needs no inference
        if i >= 2:
            sink.wait_results(i - 1)
        assert vent.send("w1", tile(i, model="other-model@1", side=4)), f"tile {i} not taken"
    results = sink.wait_results(n)
    run = sum((r.error or {}).get("type") != "beyond_credit" for r in results)
    assert 1000 < run < n, run  # the pipe filled: credit owed, then tiles beyond it
    vent.wait(lambda: vent.credit() >= 2 + run, 30, f"credit {2 + run} (lost credit)")
    assert vent.credit() == 2 + run


def test_sigterm_ends_a_worker_whose_sink_is_gone_with_results_pending(
        ctx, tmp_path, models_ready):
    """The sink is gone: the worker's PUSH queue fills (10,000 results) and the send waits
    for room. SIGTERM must still end the worker within seconds, with exit code 0."""
    vent = Ventilator(ctx, "tcp://127.0.0.1:0")
    results = f"ipc://{tmp_path}/no-sink"  # nobody listens: the sink is gone
    log = tmp_path / "worker.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zmqvision", "worker", "--model", MODEL, "--tiles",
             vent.endpoint, "--results", results, "--id", "w1", "--requests", "1",
             "--threads", "1"],
            stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        vent.wait(lambda: vent.credit() >= 1, 120, "initial credit")
        sent = 0
        while vent.send("w1", tile(sent, model="other-model@1", side=4), timeout_ms=3000):
            sent += 1
            if sent % 500 == 0:
                vent.hear(0)
            assert sent < 50_000, "the worker never waited for the sink"
        # It stopped at its PUSH queue's limit (tiles beyond its credit are answered too,
        # beyond_credit, and earn none).
        assert sent >= 9000, sent
        t0 = time.monotonic()
        proc.terminate()
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM did not end a worker blocked on a gone sink; "
                                 + log.read_text(errors="replace")[-2000:]) from None
        assert rc == 0, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        vent.close()


def test_a_result_send_waits_for_room_until_stopped_then_for_the_drain_only(ctx, tmp_path):
    """No sink: the PUSH queue (here 1 result) is full. Running, a send waits for room;
    stopped, it waits ``drain_s`` more, then gives up, and so do later sends, at once."""
    from zmqvision.worker.results import ResultSender, tile_error

    stop = sockets.StopFlag()
    sender = ResultSender(ctx, f"ipc://{tmp_path}/no-sink", stop, drain_s=0.3)
    sender.sock.sndhwm = 1
    sender.connect()
    result = tile_error(tile(0, side=4), "w1", REF, "bad_tile", "test")
    try:
        assert sender.send(result)  # queued
        threading.Timer(0.5, stop.set).start()
        t0 = time.monotonic()
        assert not sender.send(result)  # waited for room, then for the drain
        assert 0.7 < time.monotonic() - t0 < 5
        t0 = time.monotonic()
        assert not sender.send(result)
        assert time.monotonic() - t0 < 0.5 and sender.unsent == 2
    finally:
        sender.close()
