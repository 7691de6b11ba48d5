"""Mixed pools (issue 21): tiles go only to workers that serve their model.

Real processes, real models. A two-stage job (`--model plates`: plates-det, then plates-rec
on each plate's crop) on a pool of a worker WITHOUT the second stage (`worker --model
plates-det`) and one WITH it: the crops wait (the ventilator says which worker to start)
until the second joins, every record is complete and equal to a uniform pool's (`run`),
and the detector-only worker was sent no crop (its heartbeats: tiles done, none failed; a
crop it could not serve would have been a failed tile and a `model_mismatch` record). A
detection job with a worker of another model connected: that worker gets no tile."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ipc, wait_event, wait_until
from tests.test_plates_samples import PLATE_TEXTS, plate_scene
from tests.test_two_stage_readers import run_reading
from zmqvision import protocol as P

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def plate_photos(models_ready, tmp_path_factory):
    """Two small plate scenes (1024 x 768: a few 640-px tiles each), lossless."""
    d = tmp_path_factory.mktemp("mixed") / "in"
    d.mkdir()
    for k, name in enumerate(("coffee", "chelsea")):
        texts = list(PLATE_TEXTS[4 * k:4 * k + 4])
        image, _ = plate_scene(name, texts, [160, 200, 180, 220], [0, 4, -3, 2], seed=k)
        Image.fromarray(image).save(d / f"{name}.png")
    return d


def records(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def comparable(recs: list[dict]) -> list:
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), "an image has more than one record"
    return sorted((r["image"].rsplit("/", 1)[-1], r["error"],
                   [(np.round(d["box"], 2).tolist(), round(d["score"], 4), d.get("text"),
                     round(d["text_score"], 4) if d.get("text_score") is not None else None)
                    for d in r["detections"]]) for r in recs)


def last_beat(events: str, worker: str, after: float, alive) -> P.Heartbeat:
    """The worker's first heartbeat sent after ``after`` (Unix time): its final counts."""
    return wait_event(events, P.MsgType.HEARTBEAT,
                      lambda m: m.worker == worker and m.t > after, timeout=60, alive=alive,
                      what=f"a heartbeat of {worker}")


def test_crops_go_only_to_the_worker_with_the_second_stage(plate_photos, tmp_path, procs):
    uniform = comparable(run_reading(plate_photos, "plates", tmp_path / "uniform.jsonl"))
    assert len(uniform) == 2 and all(e is None for _, e, _ in uniform)
    assert sum(len(d) for _, _, d in uniform) >= 6, uniform  # plates were read

    out = tmp_path / "out.jsonl"
    sink, results, events = procs.sink(out)
    tiles = ipc(tmp_path, "tiles")

    def worker(wid: str, *model: str):
        w = procs.start("worker", *model, "--tiles", tiles, "--results", results,
                        "--threads", "1", "--heartbeat", "0.3", "--id", wid, "--announce",
                        name=wid)
        procs.announced(w)
        return w

    det = worker("det", "--model", "plates-det")  # no --stage2
    vent = procs.start("ventilate", str(plate_photos), "--model", "plates", "--bind", tiles,
                       "--sink-results", results, "--sink-events", events, "--no-progress",
                       "--no-cache", "-v", name="ventilate")
    # Stage 1 is done by the detector-only worker; the crops wait, and the ventilator
    # says which worker would serve them.
    wait_until(lambda: "serves plates-rec@" in procs.log(vent), 240,
               "the notice that no worker serves the second stage",
               alive=lambda: vent.poll() is None)
    log = procs.log(vent)
    assert "zmqvision worker --model plates-det --stage2 plates-rec" in log, log[-2000:]
    assert not out.exists() or not records(out), "a record was written without stage 2"
    both = worker("both", "--model", "plates")  # plates-det with plates-rec
    assert procs.wait(vent, 300) == 0, procs.log(vent)
    assert "2 images, 0 failed" in procs.log(vent), procs.log(vent)[-2000:]
    assert comparable(records(out)) == uniform

    ended = time.time()
    d = last_beat(events, "det", ended, lambda: det.poll() is None)
    b = last_beat(events, "both", ended, lambda: both.poll() is None)
    assert d.stage2 is None and b.stage2 is not None and b.stage2.startswith("plates-rec@")
    assert d.tiles_done > 0, "the detector-only worker took no tile: nothing was tested"
    assert d.tiles_failed == 0, "a crop went to the worker without a second stage"
    assert b.tiles_failed == 0 and b.tiles_done >= sum(len(x) for _, _, x in uniform)
    for p in (det, both, sink):
        assert procs.stop(p) == 0


def test_a_worker_of_another_model_gets_no_tile(tmp_path, procs, photos, models_ready):
    out = tmp_path / "out.jsonl"
    sink, results, events = procs.sink(out)
    tiles = ipc(tmp_path, "tiles")
    started = [procs.start("worker", "--model", model, "--tiles", tiles, "--results",
                           results, "--threads", "1", "--heartbeat", "0.3", "--id", wid,
                           "--announce", name=wid)
               for wid, model in (("other", "blazeface-short"), ("face", "centerface"))]
    for w in started:
        procs.announced(w)
    vent = procs.start("ventilate", *map(str, photos), "--model", "centerface", "--bind",
                       tiles, "--sink-results", results, "--sink-events", events,
                       "--no-progress", "--no-cache", name="ventilate")
    assert procs.wait(vent, 300) == 0, procs.log(vent)
    recs = records(out)
    assert len(recs) == len(photos)
    assert all(r["error"] is None for r in recs), [r["error"] for r in recs]
    ended = time.time()
    other = last_beat(events, "other", ended, lambda: started[0].poll() is None)
    face = last_beat(events, "face", ended, lambda: started[1].poll() is None)
    assert other.tiles_done == other.tiles_failed == 0, "the other model's worker got tiles"
    assert face.tiles_done > 0 and face.tiles_failed == 0
    for p in (*started, sink):
        assert procs.stop(p) == 0
