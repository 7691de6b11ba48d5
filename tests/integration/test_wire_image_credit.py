"""Credit in tiles with ``--wire image``: one 48-tile image among sixty 1-tile images,
two workers. A whole image goes on one tile of credit and weighs all its tiles, so the
worker that takes the big one gets nothing more until its Readies have repaid it, while
the other worker does the small images; the job completes with every record.

The ventilator is a ``Pool`` in this process (the engine ``zmqvision ventilate`` runs, on
a file job), so the test can watch its dispatcher's ledger at every lease; sink and
workers are processes of their own.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from PIL import Image

from tests.conftest import EXAMPLES, PHOTOS, ipc, wait_until
from tests.slow_worker import hold
from zmqvision.dispatch import IMAGE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "ssd-mobilenetv2-oid"  # 300 px tiles: 1800x1400 is 48 of them, 300x300 one
REQUESTS = 2


def _folder(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    photos = [Image.open(EXAMPLES / p).convert("RGB") for p in PHOTOS]
    photos[0].resize((1800, 1400)).save(d / "a-big.jpg", quality=90)  # first in the walk
    for i in range(60):
        photos[i % 4].resize((300, 300)).rotate(i * 6).save(d / f"s{i:02d}.jpg", quality=90)
    return d


def test_credit_is_in_tiles_one_big_image_among_many_small(tmp_path, procs, models_ready):
    from zmqvision import Pool
    from zmqvision.ventilator import VentilateConfig

    folder = _folder(tmp_path)
    out = tmp_path / "out.jsonl"
    _, results, events = procs.sink(out)
    tiles = ipc(tmp_path, "tiles")
    workers = [procs.start("worker", "--model", MODEL, "--tiles", tiles, "--results", results,
                           "--threads", "1", "--requests", str(REQUESTS), "--heartbeat", "0.5",
                           "--id", f"w{i}", "--announce", name="worker", **hold(30))
               for i in range(2)]
    for w in workers:
        procs.announced(w)
    pool = Pool.connect(tiles=tiles, sink=results, events=events, model=MODEL, wire="image",
                        cache="off")
    try:
        d = pool.engine.dispatch
        leases: list[tuple[bytes, tuple, int, int, int]] = []
        assign = d.assign

        def watched(key, wid, weight=1):  # runs in the engine's thread: the real assign
            before = d.workers[wid].credit
            assign(key, wid, weight)
            leases.append((wid, key, weight, before, d.workers[wid].credit))

        d.assign = watched
        wait_until(lambda: len(d.workers) == 2, 60, "both workers heard")
        done = pool.run_files(VentilateConfig(model=MODEL, inputs=(str(folder),),
                                              wire="image", cache="off", timeout=240))
        assert (done.images, done.failed) == (61, 0)

        # Every lease a whole image, weighing its tiles, sent on credit the worker had.
        assert len(leases) == 61, leases
        for wid, key, weight, before, after in leases:
            assert key[1] == IMAGE
            assert weight in (1, 48)
            assert before >= 1, (wid, key, before)  # never beyond its credit
            assert after == before - weight  # counted in tiles, not images
        bigs = [x for x in leases if x[2] == 48]
        assert len(bigs) == 1
        big_worker = bigs[0][0]
        # While it worked off 48 tiles the other worker took the small images: it did
        # most of them (the big one's worker came back for a few at the end at most).
        small = Counter(wid for wid, _, weight, _, _ in leases if weight == 1)
        other = next(w for w in d.workers if w != big_worker)
        assert small[other] > small[big_worker], small

        # Every Ready came back: each worker's credit is what it started with.
        snapshot = threading.Event()
        state: dict = {}

        def look():
            state.update({w: (s.credit, len(s.leases), s.heavy) for w, s in d.workers.items()})
            snapshot.set()

        wait_until(lambda: (pool.engine.call_soon(look), snapshot.wait(5), snapshot.clear(),
                            all(v == (REQUESTS, 0, 0) for v in state.values()))[-1],
                   30, "every worker's credit back to its requests")
    finally:
        pool.close()

    recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    assert len(recs) == 61 and len({r["id"] for r in recs}) == 61
    assert all(r["error"] is None for r in recs)
    assert sorted(r["tiles"] for r in recs) == [1] * 60 + [48]
