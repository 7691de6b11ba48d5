"""Tiles that do not decode, sent to a real worker process (BlazeFace) by a ventilator and
a sink the test plays (a ROUTER and a PULL on ipc).

docs/protocol.md, worker step 4: a tile message that does not decode costs the ventilator
one credit, so the worker gives it back (``zv.ready`` 1); when its header still names the
tile (``protocol.tile_identity``) the worker also answers ``bad_tile`` for it, so that the
image's record is an error at once instead of after its lease. A ventilator that keeps to
its credit never runs dry however many such tiles it sends; one that sends beyond its
credit gets nothing back for what it sent beyond it.
"""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from tests.conftest import ipc, wait_until
from tests.slow_worker import hold
from tests.test_worker import MODEL, REF, SIDE, Sink, Ventilator, tile
from zmqvision import protocol

pytestmark = [pytest.mark.timeout(240)]

REQUESTS = 2
GOOD_AFTER = 8  # good tiles sent on credit after the bad ones: every one is answered


class CreditVentilator(Ventilator):
    """A ventilator that keeps to its credit: what the worker's Readies gave it, less what
    it has sent (a whole image weighs its tiles)."""

    def __init__(self, ctx, endpoint: str) -> None:
        super().__init__(ctx, endpoint)
        self.spent = 0

    def left(self) -> int:
        return self.credit() - self.spent

    def send_frames(self, frames: list, weight: int = 1) -> None:
        """One message on one credit (waits for that credit)."""
        self.wait(lambda: self.left() >= 1, 30, "credit to send on")
        assert self.raw(frames)
        self.spent += weight

    def raw(self, frames: list, timeout: float = 10) -> bool:
        """A message sent whatever the credit (a ventilator that breaks the rule); False
        if the worker took none for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.send_multipart([b"w1", *frames], flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                if time.monotonic() > deadline:
                    return False
                self.sock.poll(20, zmq.POLLOUT)

    def send_good(self, n: int, first: int, sink: Sink, answered_before: int) -> None:
        """``n`` good tiles, each on credit: all answered (a worker that lost credit
        leaves this ventilator waiting for credit that never comes)."""
        for i in range(n):
            self.send_frames(protocol.encode(tile(first + i)))
            self.hear(0)
        results = sink.wait_results(answered_before + n)
        good = [r for r in results if r.index >= first]
        assert len(good) == n and all(r.error is None and r.model == REF for r in good)


def _header(frames: list) -> dict:
    return msgpack.unpackb(bytes(frames[1]), raw=False)


def _with_header(frames: list, **changes) -> list:
    h = _header(frames)
    h.update(changes)
    return [frames[0], msgpack.packb(h, use_bin_type=True), *frames[2:]]


def forged(kind: str, index: int) -> list:
    """A tile message, named ``(job "j", image "img", index, attempt 3)``, that does not
    decode in the way ``kind`` says."""
    good = protocol.Tile(job="j", image="img", index=index, box=(0.0, 0.0, SIDE, SIDE),
                         scale=1.0, model=REF, pixels=np.zeros((SIDE, SIDE, 3), np.uint8),
                         attempt=3)
    frames = [bytes(memoryview(f)) for f in protocol.encode(good)]
    if kind == "frame_size":  # one byte short of its shape
        return [frames[0], frames[1], frames[2][:-1]]
    if kind == "field_out_of_bounds":  # a score threshold above 1
        return _with_header(frames, min_score=2.0)
    if kind == "jpeg_not_shape":  # a JPEG of half the side its shape says
        half = protocol.encode_jpeg(np.zeros((SIDE // 2, SIDE // 2, 3), np.uint8))
        return [*_with_header(frames, encoding="jpeg")[:2], half]
    raise AssertionError(kind)


@pytest.fixture
def rig(procs, tmp_path, ctx, models_ready):
    """The ventilator, the sink and a worker process with ``REQUESTS`` requests."""

    def start(hold_ms: float | None = None):
        vent = CreditVentilator(ctx, ipc(tmp_path, "tiles"))
        sink = Sink(ctx, ipc(tmp_path, "results"))
        rig.closing += [vent, sink]
        extra = {} if hold_ms is None else hold(hold_ms)
        worker = procs.start("worker", "--model", MODEL, "--tiles", vent.endpoint,
                             "--results", sink.endpoint, "--id", "w1", "--requests",
                             str(REQUESTS), "--threads", "1", name="worker", **extra)
        vent.wait(lambda: vent.credit() == REQUESTS, 120, "the worker's first Ready")
        return vent, sink, worker

    rig.closing = []
    try:
        yield start
    finally:
        for s in rig.closing:
            s.close()


@pytest.mark.parametrize("kind", ["frame_size", "field_out_of_bounds", "jpeg_not_shape"])
def test_a_named_tile_that_does_not_decode_is_answered_bad_tile_and_its_credit_comes_back(
        rig, kind):
    vent, sink, worker = rig()
    n_bad = 2 * REQUESTS + 1  # more than the credit: lost credit would stall the ventilator
    for i in range(n_bad):
        vent.send_frames(forged(kind, i))
    results = sink.wait_results(n_bad, 60)
    assert sorted(r.index for r in results) == list(range(n_bad))
    for r in results:
        assert (r.job, r.image, r.attempt, r.worker, r.model) == ("j", "img", 3, "w1", REF)
        assert r.error["type"] == "bad_tile", r.error
        assert len(r.detections) == 0
    vent.wait(lambda: vent.credit() == REQUESTS + n_bad, 30, "one credit back per bad tile")

    vent.send_good(GOOD_AFTER, 100, sink, n_bad)  # the worker keeps serving, at full credit
    vent.wait(lambda: vent.left() == REQUESTS, 30, "every credit back")
    assert worker.poll() is None


def test_a_message_whose_header_does_not_parse_gets_its_credit_back_and_no_result(rig):
    vent, sink, worker = rig()
    garbage = [
        [b"zv.tile", b"\xc1", b"x"],  # 0xc1 is never valid msgpack
        [b"zv.tile", msgpack.packb([1, 2, 3])],  # a header that is not a map
        [b"zv.tile"],  # no header at all
        [b"zv.no-such-type", b"{}"],
        [b"zv.tile", msgpack.packb({"v": 1, "job": "j", "image": "img"})],  # no index
    ]
    for frames in garbage:
        vent.send_frames(frames)
    vent.wait(lambda: vent.credit() == REQUESTS + len(garbage), 30, "credit back for each")

    vent.send_good(GOOD_AFTER, 100, sink, 0)
    assert len(sink.results) == GOOD_AFTER  # nothing was answered for the garbage
    vent.wait(lambda: vent.left() == REQUESTS, 30, "every credit back")
    assert worker.poll() is None


def test_a_whole_image_whose_header_is_out_of_bounds_is_answered_for_each_of_its_tiles(rig):
    vent, sink, worker = rig()
    work = protocol.ImageWork(job="j", image="big", model=REF, width=900, height=600,
                              boxes=((0, 0, 300, 300), (300, 0, 600, 300), (600, 0, 900, 300)),
                              full=(False, False, False), data=b"\xff\xd8 not a jpeg",
                              attempt=1)
    frames = [bytes(memoryview(f)) for f in protocol.encode(work)]
    vent.send_frames(_with_header(frames, draft=3), weight=3)  # draft must be 1, 2, 4 or 8
    results = sink.wait_results(3, 30)
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert all((r.job, r.image, r.attempt) == ("j", "big", 1) for r in results)
    assert all(r.error["type"] == "bad_tile" for r in results)
    vent.wait(lambda: vent.left() == REQUESTS, 30, "its three tiles' credit back")

    vent.send_good(GOOD_AFTER, 100, sink, 3)
    assert worker.poll() is None


def test_bad_tiles_sent_beyond_credit_mint_no_credit(rig):
    """The worker holds its two good tiles (a slow device): the ventilator has spent all
    its credit, then floods it with bad tiles. None of them was sent on credit, so none
    earns any back, nor an answer; the two good tiles' credit comes back as ever."""
    vent, sink, worker = rig(hold_ms=3000)
    for i in range(REQUESTS):
        vent.send_frames(protocol.encode(tile(i)))
    flood = 50
    for i in range(flood):
        assert vent.raw(forged("frame_size", 1000 + i))
        assert vent.raw([b"zv.tile", b"\xc1"])
    vent.spent += 2 * flood  # what an honest book would say: it gets none of it back
    results = sink.wait_results(REQUESTS, 60)
    vent.wait(lambda: vent.credit() >= 2 * REQUESTS, 30, "the good tiles' credit")
    vent.hear(1500)  # anything more would come with the results: nothing does
    assert vent.credit() == 2 * REQUESTS, vent.credit()
    assert all(r.error is None for r in results) and len(sink.results) == REQUESTS

    # Back within its credit, the ventilator is served, and bad tiles earn credit again.
    vent.spent -= 2 * flood
    vent.send_frames(forged("frame_size", 0))
    wait_until(lambda: vent.hear(0) or vent.credit() == 2 * REQUESTS + 1, 30,
               "credit back for a bad tile sent on credit")
    assert worker.poll() is None
