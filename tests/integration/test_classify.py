"""Classification through the real pipeline: `zmqvision run` and separate sink, workers
and ventilator processes, the real efficientnet-lite0, real photos. The records must equal
a single-process OpenVINO run of the same tiles, survive a corrupt image and a killed
worker, come from the result cache the second time, and give a grid with --tile."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, ipc, wait_progress
from tests.test_classify import CATS, MODEL
from zmqvision.inputs import load_path
from zmqvision.plan import JobPlan, JobSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqvision", "run", *args, "--model", MODEL,
                           "--no-progress", "--workers", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)


def records(path) -> dict[str, dict]:
    out = {}
    with open(path) as fh:
        lines = fh.readlines()
    for line in lines:
        rec = json.loads(line)
        name = rec["image"].rsplit("/", 1)[-1]
        assert name not in out, f"{name}: more than one record"
        out[name] = rec
    return out


def reference(classifier, path, **settings) -> list[tuple[list, list, np.ndarray | None]]:
    """Per tile of ``path``: (class ids, scores, embedding), single-process, from the tile
    the pipeline's own plan cuts."""
    plan = JobPlan(JobSettings(model=MODEL, **settings))
    img = load_path(str(path), plan.settings.max_pixels, reduce=plan.reducer()).image
    out = []
    for tile in plan.tiles(img.width, img.height):
        pixels = plan.cut(img.pixels, tile, img.reduced)[0]
        ids, scores, emb = classifier.infer(pixels, plan.settings.top_k,
                                            embed=plan.settings.embed)
        out.append((ids.tolist(), scores.tolist(), emb))
    return out


def test_run_equals_single_process_with_embeddings_and_a_corrupt_image(
        image_dir, tmp_path, classifier):
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out.jsonl"
    p = run(str(image_dir), "--out", str(out), "--embed", "--top-k", "3")
    assert p.returncode == 1, p.stdout + p.stderr  # one image failed
    recs = records(out)
    assert sorted(recs) == sorted(f.name for f in image_dir.iterdir())
    assert recs["broken.jpg"]["error"]["type"] == "corrupt_image"
    assert recs["broken.jpg"]["labels"] == []
    names = {n: [d["label"] for d in r["labels"]] for n, r in recs.items()}
    assert set(names["chelsea.jpg"][:2]) & CATS, names
    assert set(names["coffee.jpg"][:2]) & {"espresso", "cup"}, names
    for name, rec in recs.items():
        if name == "broken.jpg":
            continue
        assert rec["error"] is None and rec["tiles"] == 1 and rec["detections"] == []
        ((ids, scores, emb),) = reference(classifier, image_dir / name, top_k=3, embed=True)
        assert [d["class_id"] for d in rec["labels"]] == ids
        assert [d["score"] for d in rec["labels"]] == pytest.approx(scores, abs=0)
        got = np.asarray(rec["embedding"], np.float32)
        assert got.shape == (1280,)
        assert np.array_equal(got, emb)
        assert rec["settings"]["task"] == {"name": "classification", "top_k": 3,
                                           "embed": True, "grid": False}


def test_tile_grid_records(image_dir, tmp_path, classifier):
    out = tmp_path / "grid.jsonl"
    p = run(str(image_dir / "coffee.jpg"), "--out", str(out), "--tile", "200",
            "--overlap", "0")
    assert p.returncode == 0, p.stdout + p.stderr
    rec = records(out)["coffee.jpg"]  # 600 x 400: 3 x 2 cuts of 200 px
    assert rec["tiles"] == 6 and len(rec["grid"]) == 6
    assert [g["box"] for g in rec["grid"]] == [[x, y, x + 200, y + 200]
                                               for y in (0, 200) for x in (0, 200, 400)]
    ref = reference(classifier, image_dir / "coffee.jpg", tile_size=(200, 200), overlap=0.0)
    for g, (ids, scores, _) in zip(rec["grid"], ref, strict=True):
        assert [d["class_id"] for d in g["labels"]] == ids
        assert [d["score"] for d in g["labels"]] == scores
    best = {}
    for g in rec["grid"]:
        for d in g["labels"]:
            best[d["class_id"]] = max(best.get(d["class_id"], 0), d["score"])
    assert rec["labels"][0]["score"] == max(best.values())


def test_second_run_is_a_cache_hit_and_detection_never_shares_it(image_dir, tmp_path):
    cache = f"sqlite://{tmp_path / 'cache.db'}"
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    p = run(str(image_dir), "--out", str(first), "--cache", cache)
    assert p.returncode == 0, p.stdout + p.stderr
    p = run(str(image_dir), "--out", str(second), "--cache", cache)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"4 images, 0 failed, 4 cached", p.stdout + p.stderr), p.stderr
    a, b = records(first), records(second)
    for name in a:
        assert b[name]["cached"] and b[name]["labels"] == a[name]["labels"]
    # Another top-k is another key: computed again.
    p = run(str(image_dir), "--out", str(tmp_path / "c.jsonl"), "--cache", cache,
            "--top-k", "2")
    assert re.search(r"0 cached", p.stdout + p.stderr), p.stderr
    assert all(len(r["labels"]) == 2 for r in records(tmp_path / "c.jsonl").values())


def test_sigkilled_worker_loses_nothing(job_dir, tmp_path, procs, classifier):
    """Grid tiles over 12 large images, three workers, one killed mid-job: every image
    gets one record, equal to the single-process classification of its tiles."""
    tiles = ipc(tmp_path, "tiles")
    out = tmp_path / "out.jsonl"
    _, results, events = procs.sink(out)
    common = ("--model", MODEL)
    workers = [procs.start("worker", *common, "--tiles", tiles, "--results", results,
                           "--threads", "1", "--heartbeat", "0.5", "--id", f"w{i}",
                           "--announce", name="worker") for i in range(3)]
    for w in workers:
        procs.announced(w)
    vent = procs.start("ventilate", str(job_dir), *common, "--tile", "200", "--overlap",
                       "0", "--bind", tiles, "--sink-results", results, "--sink-events",
                       events, "--no-progress", name="ventilate")
    wait_progress(events, 40, alive=lambda: vent.poll() is None)
    workers[1].send_signal(signal.SIGKILL)
    assert procs.wait(vent, 240) == 0, procs.log(vent)
    recs = records(out)
    assert len(recs) == 12
    for name, rec in recs.items():
        assert rec["error"] is None and rec["tiles"] == 48 == len(rec["grid"])
        ref = reference(classifier, job_dir / name, tile_size=(200, 200), overlap=0.0)
        assert [[d["class_id"] for d in g["labels"]] for g in rec["grid"]] == \
            [ids for ids, _, _ in ref], name
