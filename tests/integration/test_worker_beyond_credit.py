"""Good tiles sent beyond credit, to a real worker process (BlazeFace, a slow device) by a
ventilator and a sink the test plays (a ROUTER and a PULL on ipc).

docs/protocol.md, worker step 4: a ventilator may send only what the worker's Readies
granted it (a whole image needs one tile of credit and then weighs its tiles). A worker
keeps at most a margin (its requests + ``dispatch.CREDIT_MARGIN``) beyond that per
ventilator; a tile or image beyond it is not queued, each of its tiles is answered
``beyond_credit`` at the sink (its image's record is an error: nothing lost silently), and
it earns no credit back. Without this, one ventilator that ignores credit grows the
worker's queue without bound and starves the other ventilators' jobs.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import ipc
from tests.integration.test_worker_bad_tiles import CreditVentilator
from tests.slow_worker import hold
from tests.test_worker import MODEL, REF, SIDE, Sink, tile
from zmqvision import protocol
from zmqvision.dispatch import CREDIT_MARGIN

pytestmark = [pytest.mark.timeout(240)]

REQUESTS = 2
MARGIN = REQUESTS + CREDIT_MARGIN  # tiles a worker holds beyond the credit it granted
HOLD_MS = 2500  # each tile's completion held back: the flood is in before any answer
FLOOD = 60  # good tiles sent beyond credit
GOOD_AFTER = 4  # good tiles sent on credit after the flood: every one is answered


def _image(name: str, tiles: int) -> protocol.ImageWork:
    """A whole image of ``tiles`` tiles side by side, each the model's input size."""
    data = protocol.encode_jpeg(np.zeros((SIDE, SIDE * tiles, 3), np.uint8))
    return protocol.ImageWork(
        job="j", image=name, model=REF, width=SIDE * tiles, height=SIDE,
        boxes=tuple((i * SIDE, 0, (i + 1) * SIDE, SIDE) for i in range(tiles)),
        full=(False,) * tiles, data=data, attempt=2, max_pixels=100_000_000)


@pytest.fixture
def rig(procs, tmp_path, ctx, models_ready):
    """The ventilator, the sink and a slow worker process with ``REQUESTS`` requests."""
    vent = CreditVentilator(ctx, ipc(tmp_path, "tiles"))
    sink = Sink(ctx, ipc(tmp_path, "results"))
    try:
        worker = procs.start("worker", "--model", MODEL, "--tiles", vent.endpoint,
                             "--results", sink.endpoint, "--id", "w1", "--requests",
                             str(REQUESTS), "--threads", "1", name="worker",
                             **hold(HOLD_MS))
        vent.wait(lambda: vent.credit() == REQUESTS, 120, "the worker's first Ready")
        yield vent, sink, worker
    finally:
        vent.close()
        sink.close()


def test_tiles_flooded_beyond_credit_are_answered_beyond_credit_not_queued(rig):
    vent, sink, worker = rig
    for i in range(REQUESTS):  # the whole credit, spent as it should be
        vent.send_frames(protocol.encode(tile(i)))
    t0 = time.monotonic()
    for i in range(FLOOD):  # then good tiles with no credit left
        assert vent.raw(protocol.encode(tile(100 + i)))
    assert vent.raw(protocol.encode(_image("big", 3)))  # and a whole image
    flood_s = time.monotonic() - t0
    assert flood_s < HOLD_MS / 1000, f"the flood took {flood_s:.1f} s: no answer before it"

    total = REQUESTS + FLOOD + 3
    results = sink.wait_results(total, 120)
    assert len(results) == total  # every tile answered once, none lost
    good = sorted(r.index for r in results if r.error is None)
    beyond = [r for r in results if r.error is not None]
    # The credit, then the margin, in the order they came; nothing more was run.
    assert good == [*range(REQUESTS), *range(100, 100 + MARGIN)]
    assert sorted((r.image, r.index) for r in beyond) == sorted(
        [("img", 100 + i) for i in range(MARGIN, FLOOD)] + [("big", i) for i in range(3)])
    for r in beyond:
        assert r.error["type"] == "beyond_credit", r.error
        assert "worker w1" in r.error["message"] and vent.endpoint in r.error["message"]
        assert (r.worker, r.model, len(r.detections)) == ("w1", REF, 0)
        assert r.attempt == (2 if r.image == "big" else 0)

    # Credit back for what was run, none for what was refused.
    vent.wait(lambda: vent.credit() >= REQUESTS + len(good), 30, "the run tiles' credit")
    vent.hear(1500)  # anything more would have come with the results: nothing does
    assert vent.credit() == REQUESTS + len(good), vent.credit()
    # Never more held than the credit and the margin (heartbeats: started + queued).
    beats = vent.of_type(protocol.Heartbeat)
    assert beats and max(b.in_flight + b.queue for b in beats) <= REQUESTS + MARGIN, [
        (b.in_flight, b.queue) for b in beats]
    # ... and the worker says what it refused, for `zmqvision watch` (each image tile).
    vent.wait(lambda: max(b.refused for b in vent.of_type(protocol.Heartbeat))
              == len(beyond), 30, "a heartbeat counting the refused tiles")

    # The worker's books and the ventilator's agree again: within credit, served in full.
    vent.spent = len(good)
    vent.send_good(GOOD_AFTER, 1000, sink, total)
    assert worker.poll() is None


def test_a_whole_image_heavier_than_the_credit_left_is_run_in_full(rig):
    """An honest ventilator sends a whole image on one tile of credit: it may weigh more
    than the credit left (the worker's count goes below zero), and every tile of it is
    run, as are the tiles it sends once its credit is back."""
    vent, sink, worker = rig
    tiles = REQUESTS + MARGIN + 2  # heavier than the credit and the margin together
    vent.send_frames(protocol.encode(_image("big", tiles)), weight=tiles)
    results = sink.wait_results(tiles, 120)
    assert sorted(r.index for r in results) == list(range(tiles))
    assert all(r.error is None and r.image == "big" for r in results), [
        r.error for r in results]
    vent.wait(lambda: vent.left() == REQUESTS, 60, "the image's credit back")
    vent.send_good(GOOD_AFTER, 1000, sink, tiles)
    assert worker.poll() is None
