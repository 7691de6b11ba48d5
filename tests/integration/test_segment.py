"""Segmentation through the real pipeline: `zmqvision run` and separate sink, workers and
ventilator processes, the real deeplabv3 and selfie models, scikit-image's photos. The
masks must equal a single-process run of the same tiles (``segment.segment_image``),
survive a corrupt image, a SIGKILLed worker and forged score frames, and a second run or
``--resume`` must behave as README says (a second run's masks come from the result cache:
tests/integration/test_cache_segment.py)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import msgpack
import numpy as np
import pytest
import skimage.data
import zmq
from PIL import Image

from tests.conftest import ROOT, ipc, wait_event, wait_progress
from zmqvision import protocol as P
from zmqvision.boxes import Detections
from zmqvision.models import CATALOG
from zmqvision.models.catalog import VOC_LABELS
from zmqvision.plan import JobPlan, JobSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

CAT = VOC_LABELS.index("cat")


@pytest.fixture(scope="module")
def segmenters(models_ready):
    from zmqvision.segment import Segmenter

    return {n: Segmenter(CATALOG[n], threads=2) for n in ("deeplabv3", "selfie-segmentation")}


def photo(name: str) -> np.ndarray:
    return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])


def mosaic(seed: int = 0) -> np.ndarray:
    """1024 x 768 of astronaut and chelsea: a grid of tiles for either model."""
    a, c = photo("astronaut"), np.asarray(Image.fromarray(photo("chelsea")).resize((512, 384)))
    top = np.concatenate([a[:384], c], axis=1)
    bottom = np.concatenate([c, a[128:]], axis=1)
    out = np.concatenate([top, bottom], axis=0)
    return np.ascontiguousarray(np.roll(out, 37 * seed, axis=1))


@pytest.fixture
def seg_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("astronaut", "chelsea"):
        Image.fromarray(photo(name)).save(d / f"{name}.png")
    Image.fromarray(mosaic()).save(d / "mosaic.png")
    return d


def run(model: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqvision", "run", *args, "--model", model,
                           "--no-progress", "--workers", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def records(path) -> dict[str, dict]:
    out = {}
    for line in open(path).read().splitlines():  # noqa: SIM115 - read whole at once
        rec = json.loads(line)
        name = rec["image"].rsplit("/", 1)[-1]
        assert name not in out, f"{name}: more than one record"
        out[name] = rec
    return out


def mask_of(rec: dict) -> np.ndarray:
    with Image.open(rec["segmentation"]["mask"]) as im:
        assert im.mode == "P" and im.size == (rec["width"], rec["height"])
        return np.asarray(im)


def reference(seg, path, model: str, **settings) -> np.ndarray:
    """The single-process mask of ``path``: the pipeline's own plan, ``segment_image``."""
    from zmqvision.segment import segment_image

    plan = JobPlan(JobSettings(model=model, **settings))
    px = np.asarray(Image.open(path).convert("RGB"))
    tiles = plan.tiles(px.shape[1], px.shape[0])
    return segment_image(px, seg, tiles=tiles, overlap=plan.settings.overlap).labels


def test_run_masks_equal_single_process_with_a_corrupt_image(seg_dir, tmp_path, segmenters):
    (seg_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out, masks = tmp_path / "out.jsonl", tmp_path / "masks"
    p = run("deeplabv3", str(seg_dir), "--out", str(out), "--masks", str(masks))
    assert p.returncode == 1, p.stdout + p.stderr  # one image failed
    recs = records(out)
    assert sorted(recs) == ["astronaut.png", "broken.png", "chelsea.png", "mosaic.png"]
    assert recs["broken.png"]["error"] is not None
    assert recs["broken.png"]["segmentation"] is None
    assert recs["mosaic.png"]["tiles"] > 1 and recs["astronaut.png"]["tiles"] == 1
    for name in ("astronaut.png", "chelsea.png", "mosaic.png"):
        rec = recs[name]
        assert rec["error"] is None and rec["detections"] == [] and not rec["cached"]
        ref = reference(segmenters["deeplabv3"], seg_dir / name, "deeplabv3")
        assert np.array_equal(mask_of(rec), ref), name
        counts = {c["class_id"]: c["pixels"] for c in rec["segmentation"]["classes"]}
        assert counts == {k: int(v) for k, v in enumerate(np.bincount(ref.ravel())) if v}
        assert rec["settings"]["task"]["name"] == "segmentation"
    cat = {c["class_id"]: c["coverage"] for c in recs["chelsea.png"]["segmentation"]["classes"]}
    assert cat[CAT] > 0.6 and max(cat, key=cat.get) == CAT, cat  # chelsea: mostly cat
    assert sorted(p.name for p in masks.iterdir()) == sorted(
        f"{n[:-4]}-{recs[n]['id'][:8]}.png" for n in ("astronaut.png", "chelsea.png",
                                                      "mosaic.png"))


def test_selfie_finds_the_astronaut(tmp_path):
    from tests.test_segment_models import ASTRONAUT, HELMET, drawn, iou

    Image.fromarray(photo("astronaut")).save(tmp_path / "astronaut.png")
    out = tmp_path / "out.jsonl"
    p = run("selfie-segmentation", str(tmp_path / "astronaut.png"), "--out", str(out),
            "--masks", str(tmp_path / "m"))
    assert p.returncode == 0, p.stdout + p.stderr
    (rec,) = records(out).values()
    person = mask_of(rec) == 1
    hand_made = drawn("polygon", ASTRONAUT) | drawn("ellipse", HELMET)
    assert iou(person, hand_made) >= 0.8


def test_second_run_and_resume(seg_dir, tmp_path):
    """A second run with the result cache writes its masks from it (identical files), a
    --resume does only the images not yet recorded and leaves the others' masks alone."""
    (seg_dir / "mosaic.png").unlink()
    cache = f"sqlite://{tmp_path / 'cache.db'}"
    out, masks = tmp_path / "a.jsonl", tmp_path / "masks"
    p = run("selfie-segmentation", str(seg_dir), "--out", str(out), "--masks", str(masks),
            "--cache", cache)
    assert p.returncode == 0, p.stdout + p.stderr
    first = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in masks.iterdir()}
    assert len(first) == 2
    p = run("selfie-segmentation", str(seg_dir), "--out", str(out), "--masks", str(masks),
            "--cache", cache)
    assert p.returncode == 0 and re.search(r"2 images, 0 failed, 2 cached, 0 tiles",
                                           p.stdout), p.stdout
    assert {f.name: f.read_bytes() for f in masks.iterdir()} == \
        {n: b for n, (b, _) in first.items()}
    assert all(r["cached"] for r in records(out).values())
    second = {f.name: f.stat().st_mtime_ns for f in masks.iterdir()}
    Image.fromarray(photo("coffee")).save(seg_dir / "coffee.png")
    p = run("selfie-segmentation", str(seg_dir), "--out", str(out), "--masks", str(masks),
            "--resume")
    assert p.returncode == 0, p.stdout + p.stderr
    recs = records(out)
    assert sorted(recs) == ["astronaut.png", "chelsea.png", "coffee.png"]
    now = {f.name: f.stat().st_mtime_ns for f in masks.iterdir()}
    assert {n: now[n] for n in second} == second  # not rewritten
    assert recs["coffee.png"]["segmentation"]["mask"].endswith(
        f"coffee-{recs['coffee.png']['id'][:8]}.png")


def test_sigkilled_worker_and_forged_frames_lose_nothing(tmp_path, procs, segmenters):
    """Six 1024 x 768 images (20 tiles each), three workers, one SIGKILLed mid-job, and
    forged score frames (NaN, oversized) sent to the sink meanwhile: every image gets its
    mask, identical to the single-process one, and the sink counts what it refused."""
    d = tmp_path / "job"
    d.mkdir()
    for i in range(6):
        Image.fromarray(mosaic(i)).save(d / f"img{i}.png")
    tiles = ipc(tmp_path, "tiles")
    out, masks = tmp_path / "out.jsonl", tmp_path / "masks"
    sink, results, events = procs.sink(out, "--masks", str(masks))
    common = ("--model", "deeplabv3")
    workers = [procs.start("worker", *common, "--tiles", tiles, "--results", results,
                           "--threads", "1", "--heartbeat", "0.5", "--id", f"w{i}",
                           "--announce", name="worker") for i in range(3)]
    for w in workers:
        procs.announced(w)
    vent = procs.start("ventilate", str(d), *common, "--bind", tiles, "--sink-results",
                       results, "--sink-events", events, "--no-progress", name="ventilate")
    wait_progress(events, 25, alive=lambda: vent.poll() is None)
    workers[1].send_signal(signal.SIGKILL)
    _forge(results)
    assert procs.wait(vent, 300) == 0, procs.log(vent)
    status = wait_event(events, P.MsgType.SINK_STATUS, lambda s: s.bad_messages >= 1,
                        timeout=10, what="the forged frame counted")
    assert status.jobs_active == 0 and sink.poll() is None
    recs = records(out)
    assert sorted(recs) == [f"img{i}.png" for i in range(6)]
    for name, rec in recs.items():
        assert rec["error"] is None and rec["tiles"] == 20, (name, rec["error"])
        ref = reference(segmenters["deeplabv3"], d / name, "deeplabv3")
        assert np.array_equal(mask_of(rec), ref), name


def _forge(results: str) -> None:
    """A NaN score map and an oversized one, pushed to the sink as a worker would."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = 2000
    push.connect(results)
    try:
        msg = P.Result(job="nojob", image="x", index=0, worker="forger", model="deeplabv3@1",
                       detections=Detections.empty(),
                       scores=np.zeros((4, 4, 21), np.float32))
        frames = [bytes(memoryview(f)) for f in P.encode(msg)]
        nan = np.full((4, 4, 21), np.nan, np.float32)
        push.send_multipart([*frames[:5], nan.tobytes()])
        header = msgpack.unpackb(frames[1])
        header["scores"] = [1024, 1024, 5]  # 20 MiB: over the frame limit
        push.send_multipart([frames[0], msgpack.packb(header), *frames[2:5],
                             b"\0" * (1024 * 1024 * 5 * 4)])
    finally:
        push.close()
        ctx.term()
