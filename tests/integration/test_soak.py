"""Soak (excluded from the default run; `pytest -m soak`): about 100k small tiles while a
worker is SIGKILLed every few seconds and a new one started: 0 lost, 0 duplicated."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import ROOT
from tests.integration.test_reliability import Cluster

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

MODEL = "blazeface-short"  # 128 px input: many tiles, quick ones


def test_100k_tiles_with_workers_killed_every_few_seconds(tmp_path, procs, models_ready):
    from PIL import Image

    d = tmp_path / "soak"
    d.mkdir()
    photo = Image.open(ROOT / "examples" / "images" / "astronaut.jpg").resize((1280, 1280))
    n_images = 600  # × 169 tiles of 128 px = 101,400 tiles
    for i in range(n_images):
        photo.save(d / f"s{i:04d}.jpg", quality=85)
    c = Cluster(procs, tmp_path)
    c.sink()
    args = ("--model", MODEL)
    workers = [procs.start("worker", "--model", MODEL, "--tiles", c.tiles, "--results",
                           c.results, "--threads", "1", "--heartbeat", "0.5", name="worker")
               for _ in range(2)]
    vent = procs.start("ventilate", str(d), *args, "--bind", c.tiles, "--sink-results",
                       c.results, "--sink-events", c.events, "--no-progress", "--tile-size",
                       "128", name="ventilate")
    kills = 0
    while vent.poll() is None:
        time.sleep(4)
        if vent.poll() is not None:
            break
        victim = workers.pop(0)
        victim.send_signal(signal.SIGKILL)
        kills += 1
        workers.append(procs.start("worker", "--model", MODEL, "--tiles", c.tiles,
                                   "--results", c.results, "--threads", "1", "--heartbeat",
                                   "0.5", name="worker"))
    assert vent.returncode == 0, procs.log(vent)[-3000:]
    with open(c.out) as fh:
        recs = [json.loads(x) for x in fh if x.strip()]
    assert len(recs) == n_images  # 0 lost
    assert len({r["id"] for r in recs}) == n_images  # 0 duplicated
    assert all(r["error"] is None and r["tiles"] == 169 for r in recs)
    assert kills >= 5
    print(f"soak: {n_images * 169} tiles, {kills} workers killed; {procs.log(vent)[-200:]}")
