"""A worker SIGKILLed while a reading job's crops are out (`--model plates`): its tiles,
stage 1 and stage-2 crops alike, come back by its missed heartbeats, and the records
equal an undisturbed run's, one per image, nothing lost or doubled (as
test_two_stage_reliability does for faces)."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import ipc
from tests.integration.test_two_stage_reliability import kill_w1_during_stage_two
from tests.slow_worker import hold
from tests.test_plates_samples import PLATE_TEXTS, plate_scene
from tests.test_two_stage_readers import run_reading

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def lot(models_ready, tmp_path_factory):
    """Four 2000 × 1500 photos with 12 plates each: plenty of crops out when a worker dies."""
    d = tmp_path_factory.mktemp("lot") / "in"
    d.mkdir()
    for k, name in enumerate(("coffee", "chelsea", "rocket", "astronaut")):
        texts = [PLATE_TEXTS[(k + i) % 12] for i in range(12)]
        image, _ = plate_scene(name, texts, [100 + 10 * i for i in range(12)],
                               [(-1) ** i * (i % 5) for i in range(12)], size=(2000, 1500),
                               seed=k)
        Image.fromarray(image).save(d / f"lot{k}.png")
    return d


def comparable(recs):
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), "an image has more than one record"
    return sorted((r["image"].rsplit("/", 1)[-1], r["error"],
                   [(d["text"], d["text_score"], [round(v, 2) for v in d["box"]])
                    for d in r["detections"]]) for r in recs)


def test_a_worker_killed_during_stage_two_loses_nothing(lot, tmp_path, procs):
    undisturbed = comparable(run_reading(lot, "plates", tmp_path / "ref.jsonl"))
    assert len(undisturbed) == 4
    assert sum(len(p) for _, _, p in undisturbed) >= 40
    out = tmp_path / "out.jsonl"
    _, results, events = procs.sink(out)
    tiles = ipc(tmp_path, "tiles")
    # --model plates: the worker runs plates-det and, as its second stage, plates-rec.
    # Slowed (each stage-1 tile held 300 ms), so that the job is still running when the
    # kill is noticed: on a quiet machine the whole job took 1.4 s, ending before w1's
    # missed heartbeats were counted, and the recovery path was never taken.
    workers = [procs.start("worker", "--model", "plates", "--tiles", tiles, "--results",
                           results, "--threads", "1", "--heartbeat", "0.5", "--id", f"w{i}",
                           "--announce", name="worker", **hold(300)) for i in range(2)]
    for w in workers:
        procs.announced(w)
    vent = procs.start("ventilate", str(lot), "--model", "plates", "--bind", tiles,
                       "--sink-results", results, "--sink-events", events, "--no-progress",
                       "--no-cache", "-v", name="ventilate")
    assert comparable(kill_w1_during_stage_two(procs, events, vent, workers, out)) \
        == undisturbed
