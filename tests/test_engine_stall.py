"""A lone worker that pauses is not a hoarder: the engine's job must not stall.

Seen on a loaded 2-core machine: an embedded ``detect`` (one worker thread) sat for
minutes with every thread idle, then finished. Its one worker had finished a tile, then
had none done for ``HOARD_MIN_S`` (3 s: the machine was busy) while it held tiles; the
dispatcher took that for hoarding, because the "others finished tiles meanwhile" test
compared times and the last tile done was this worker's own (``last_done_at`` equal to
its ``progress_at``). Quarantined with no other worker, the job waited 30 s, then 60 s…
"""

from __future__ import annotations

import os
import time

import pytest
import zmq
from PIL import Image

from tests.test_engine import MODEL, Harness
from zmqvision import protocol
from zmqvision.dispatch import HOARD_MIN_S, Dispatcher
from zmqvision.models import resolve


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_lone_worker_that_pauses_after_a_tile_is_not_quarantined():
    """Before: quarantined for 30 s, with nobody else to take its tiles."""
    clock = Clock()
    d = Dispatcher(dead_periods=3.0, lease_s=60.0, clock=clock)
    d.heard(b"a", period=1.0, requests=2)
    d.ready(b"a", 2)
    d.assign(("img", 0), b"a")
    d.assign(("img", 1), b"a")
    clock.t += 0.1
    d.done(("img", 0))  # its own tile: the last tile anyone finished
    d.ready(b"a", 1)
    d.assign(("img", 2), b"a")
    clock.t += HOARD_MIN_S + 1.0  # a pause (a busy machine), still heartbeating
    d.heard(b"a")
    d.expire()
    assert d.quarantined == 0
    assert d.is_leased(("img", 1)) and d.is_leased(("img", 2))
    d.done(("img", 1))
    d.ready(b"a", 1)
    assert d.pick_worker() == b"a"


def test_a_worker_whose_tiles_stall_while_another_finishes_is_still_quarantined():
    """The fix keeps hoarding detection: the last tile done is another worker's."""
    clock = Clock()
    d = Dispatcher(dead_periods=3.0, lease_s=60.0, clock=clock)
    for wid in (b"g", b"a"):
        d.heard(wid, period=1.0, requests=2)
        d.ready(wid, 2)
    d.assign(("img", 0), b"g")
    d.assign(("img", 1), b"a")
    clock.t += 0.1
    d.done(("img", 0))  # g finished one, then holds the next for ever
    d.assign(("img", 2), b"g")
    clock.t += 0.1
    d.done(("img", 1))  # a finishes after g's last progress
    clock.t += HOARD_MIN_S + 1.0
    for wid in (b"g", b"a"):
        d.heard(wid)
    d.expire()
    assert d.quarantined == 1 and d.workers[b"g"].quarantined_until > clock.t


def _heartbeat(wid: str, in_flight: int) -> list:
    return protocol.encode(protocol.Heartbeat(
        worker=wid, host="h", pid=os.getpid(), device="CPU", model=resolve(MODEL).ref,
        tiles_done=0,
        tiles_failed=0, tiles_per_s=0.0, in_flight=in_flight, queue=0, uptime=1.0,
        period=1.0, requests=2))


@pytest.fixture
def harness(tmp_path, models_ready):
    image = tmp_path / "big.png"
    Image.new("RGB", (600, 600), (90, 120, 200)).save(image)  # 36 tiles
    h = Harness(tmp_path, image)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.timeout(90)
def test_the_engine_keeps_feeding_a_lone_worker_after_it_paused(harness):
    """Over real sockets: a worker (written here) answers a tile, pauses longer than the
    hoarding limit while it holds two, heartbeating, then answers them. Before: the
    dispatcher quarantined it, and the next tile came 30 s later."""
    engine = harness.pool.engine
    sink_id = "s1"
    deadline = time.monotonic() + 10
    while engine.sink.sink_id != sink_id:  # the pool's SUB hears the fake sink (joins late)
        assert time.monotonic() < deadline, "the pool never heard the sink"
        harness.pub.send_multipart(protocol.encode(protocol.SinkStatus(
            sink=sink_id, host="h", pid=1, uptime=0.0, jobs_active=0, bad_messages=0)))
        time.sleep(0.02)
    w = harness.worker("w1", 2)
    w.send_multipart(_heartbeat("w1", 0))
    held = harness.tiles(w, 2)
    assert len(held) == 2

    def answer(tile: protocol.Tile) -> None:
        harness.pub.send_multipart(protocol.encode(protocol.Ack(
            sink=sink_id, job=tile.job, tiles=((tile.image, tile.index),))))
        w.send_multipart(protocol.encode(protocol.Ready("w1", 1)))

    answer(held.pop(0))
    held += harness.tiles(w, 1)
    assert len(held) == 2
    # The pause: both tiles held, none done, for longer than the hoarding limit; then
    # wait for the engine's housekeeping to have looked after that (a condition).
    pause_end = time.monotonic() + engine.dispatch.hoard_s() + 0.5
    while time.monotonic() < pause_end or engine._next_housekeeping < pause_end + 0.2:
        w.send_multipart(_heartbeat("w1", 2))
        assert time.monotonic() < pause_end + 20, "the engine did no housekeeping"
        time.sleep(0.2)
        while w.poll(0, zmq.POLLIN):  # nothing else should come: it has no credit
            held.append(protocol.decode(w.recv_multipart(copy=False)))
    assert engine.dispatch.quarantined == 0
    for tile in held:
        answer(tile)
    assert len(harness.tiles(w, 2, timeout=5.0)) == 2  # its credit brings tiles at once
