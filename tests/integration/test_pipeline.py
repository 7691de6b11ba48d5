"""The whole pipeline with real processes, sockets and models.

The reference for every comparison is a plain single-process loop over the same tiles with
the same compiled model and the same merge: the distributed pipeline must change where the
work happens, never the answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import ROOT, ipc, wait_progress
from zmqvision import detect
from zmqvision.boxes import Detections
from zmqvision.io import decode_image, read_file
from zmqvision.merge import MergeConfig, merge
from zmqvision.models import Detector, ensure, resolve
from zmqvision.scales import resolve_scales
from zmqvision.tiling import cut_tile, draft_reducer, plan_scales, plan_tiles, to_image_coords

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Tile and input sizes small enough that every example photo is cut into several tiles.
CASES = {
    "centerface": {"input_size": (320, 320)},
    "ssd-mobilenetv2-oid": {},
    "blazeface-short": {"tile_size": (256, 256)},
}


def reference(paths, model, *, input_size=None, tile_size=None, overlap=0.2,
              merge_cfg=MergeConfig(), full_pass=False, scales=None, min_size=None):
    """decode → tile → synchronous infer → shift → merge, in this process (a JPEG whose
    tiles all shrink 2× or more decoded at reduced size, as the ventilator does)."""
    spec = resolve(model)
    if input_size:
        spec = spec.with_input_size(*input_size)
    det = Detector(spec, model_path=ensure(spec))
    cuts = resolve_scales(spec, tile_size=tile_size, scales=scales, min_size=min_size,
                          full_pass=full_pass)
    reduce = draft_reducer(cuts, overlap, spec.input_size)
    out = {}
    for path in paths:
        img = decode_image(read_file(str(path)), reduce=reduce)
        parts = []
        for tile in plan_scales(img.width, img.height, cuts, overlap):
            pixels, scale = cut_tile(img.pixels, tile, spec.input_size, img.reduced)
            d = det.infer(pixels)
            parts.append(Detections(to_image_coords(d.boxes, tile.box, scale), d.scores,
                                    d.labels))
        out[str(path)] = merge(Detections.concat(parts), merge_cfg)
    return out, spec


def assert_same(records, ref, spec):
    assert sorted(r["image"] for r in records) == sorted(ref)
    for rec in records:
        want = ref[rec["image"]]
        assert rec["error"] is None, rec["error"]
        assert rec["model"] == spec.ref
        got = rec["detections"]
        assert len(got) == len(want), (rec["image"], got, want)
        for d, box, score, label in zip(got, want.boxes, want.scores, want.labels,
                                        strict=True):
            assert d["label"] == spec.labels[label]
            assert np.allclose(d["box"], box, atol=1e-4, rtol=0), (d["box"], box)
            assert d["score"] == pytest.approx(float(score), abs=1e-5)


@pytest.mark.parametrize("model", list(CASES))
def test_pipeline_equals_single_process_run(model, photos, models_ready):
    opts = CASES[model]
    ref, spec = reference(photos, model, **opts)
    records = detect([str(p) for p in photos], model=model, **opts)
    assert_same(records, ref, spec)
    assert sum(len(r["detections"]) for r in records) > 0  # the comparison is not vacuous
    assert all(r["tiles"] > 1 for r in records)


def test_pipeline_with_full_pass_and_nms_equals_reference(photos, models_ready):
    cfg = MergeConfig(method="nms", metric="iou", threshold=0.4)
    ref, spec = reference(photos, "ssd-mobilenetv2-oid", merge_cfg=cfg, full_pass=True)
    records = detect([str(p) for p in photos], model="ssd-mobilenetv2-oid", merge=cfg,
                     full_pass=True, workers=2)
    assert_same(records, ref, spec)


def test_enlarged_and_multi_scale_tiles_equal_reference(photos, models_ready):
    """Cuts resized to the input (enlarged 200 → 320, shrunk 400 → 320) plus the whole
    image, merged in one pass: still exactly what one process computes."""
    opts = {"input_size": (320, 320), "scales": ((200, 200), (400, 400), "full")}
    ref, spec = reference(photos, "centerface", **opts)
    records = detect([str(p) for p in photos], model="centerface", **opts)
    assert_same(records, ref, spec)
    assert sum(len(r["detections"]) for r in records) > 0
    assert all(r["settings"]["tiling"]["scales"] == [[200, 200], [400, 400], "full"]
               for r in records)


def test_real_photos_give_the_expected_objects(photos, models_ready):
    by_name = {p.name: str(p) for p in photos}
    recs = {r["image"]: r for r in detect(list(by_name.values()), model="ssd-mobilenetv2-oid",
                                          tile_size=(1000, 1000))}
    labels = {k: {d["label"] for d in recs[v]["detections"]} for k, v in by_name.items()}
    assert "Cat" in labels["chelsea.jpg"]
    assert "Person" in labels["astronaut.jpg"]
    faces = detect([by_name["astronaut.jpg"]], model="centerface")[0]["detections"]
    assert len(faces) == 1 and faces[0]["score"] > 0.8
    x1, y1, x2, y2 = faces[0]["box"]
    assert 150 < (x1 + x2) / 2 < 300 and 60 < (y1 + y2) / 2 < 200


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "zmqvision", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _records(path):
    return sorted((json.loads(line) for line in open(path) if line.strip()),
                  key=lambda r: r["image"])


def _comparable(records):
    return [(r["image"], r["width"], r["height"], r["model"], r["error"],
             [(d["label"], round(d["score"], 5), [round(x, 3) for x in d["box"]])
              for d in r["detections"]]) for r in records]


def test_run_command_writes_jsonl_coco_and_drawings(image_dir, tmp_path, models_ready):
    out = tmp_path / "r.jsonl"
    drawn = tmp_path / "drawn"
    p = _cli("run", str(image_dir), "--model", "ssd-mobilenetv2-oid", "--out", str(out),
             "--draw", str(drawn), "--no-progress", "-v")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "4 images, 0 failed" in p.stdout
    # Undisturbed, each image is decoded once and each tile sent once (regression: the
    # pixels were dropped before the last tile was cut, so every image was decoded twice).
    sent = re.search(r"4 images, (\d+) tiles sent \(0 again .*, 0 backup copies\), "
                     r"0 images re-read", p.stderr)
    assert sent, p.stderr
    recs = _records(out)
    assert len(recs) == 4 and all(r["error"] is None for r in recs)
    assert int(sent.group(1)) == sum(r["tiles"] for r in recs)
    assert len(list(drawn.glob("*.jpg"))) == 4
    coco_out = tmp_path / "r.json"
    p = _cli("run", str(image_dir), "--model", "ssd-mobilenetv2-oid", "--out", str(coco_out),
             "--format", "coco", "--no-progress")
    assert p.returncode == 0, p.stdout + p.stderr
    coco = json.loads(coco_out.read_text())
    assert len(coco["images"]) == 4
    assert len(coco["annotations"]) == sum(len(r["detections"]) for r in recs)


def test_usage_errors_exit_2(tmp_path):
    assert _cli("run", str(tmp_path / "nope")).returncode == 2
    assert _cli("run", str(tmp_path), "--model", "no-such-model").returncode == 2
    assert _cli("run", str(tmp_path), "--overlap", "1.5").returncode == 2


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_jpeg_wire_gives_nearly_the_same_detections(image_dir, tmp_path, models_ready):
    """Tiles sent as JPEG (the encoding for links between hosts) are lossy: detections may
    move a little or a borderline one may flip, but the job is the same job."""
    outs = {}
    for wire in ("raw", "jpeg"):
        outs[wire] = tmp_path / f"{wire}.jsonl"
        p = _cli("run", str(image_dir), "--model", "ssd-mobilenetv2-oid", "--out",
                 str(outs[wire]), "--no-progress", "--wire", wire)
        assert p.returncode == 0, p.stdout + p.stderr
    raw = {r["image"]: r for r in _records(outs["raw"])}
    jpeg = {r["image"]: r for r in _records(outs["jpeg"])}
    assert raw.keys() == jpeg.keys() and len(raw) == 4
    confident = matched = 0
    for image, rec in raw.items():
        others = jpeg[image]["detections"]
        for d in rec["detections"]:
            if d["score"] < 0.5:
                continue
            confident += 1
            matched += any(o["label"] == d["label"] and _iou(o["box"], d["box"]) > 0.8
                           for o in others)
    assert confident >= 4 and matched >= 0.9 * confident, (matched, confident)


@pytest.mark.parametrize("n_workers", [1, 3])
def test_separate_commands_over_tcp_equal_run(n_workers, image_dir, tmp_path, procs,
                                              models_ready):
    model = "ssd-mobilenetv2-oid"
    embedded = tmp_path / "embedded.jsonl"
    p = _cli("run", str(image_dir), "--model", model, "--out", str(embedded), "--no-progress")
    assert p.returncode == 0, p.stdout + p.stderr

    # Results and events over TCP (ports the sink picks and announces), tiles over ipc:
    # both ventilators bind the same path, which no other process can take in between.
    tiles = ipc(tmp_path, "tiles")
    out = tmp_path / "separate.jsonl"
    sink, results, events = procs.sink(out)
    workers = [procs.start("worker", "--model", model, "--tiles", tiles, "--results", results,
                           "--threads", "1", name="worker") for _ in range(n_workers)]
    vent = procs.start("ventilate", str(image_dir), "--model", model, "--bind", tiles,
                       "--sink-results", results, "--sink-events", events, "--no-progress",
                       name="ventilate")
    assert procs.wait(vent, 240) == 0, procs.log(vent)
    assert "4 images, 0 failed" in procs.log(vent)
    assert _comparable(_records(out)) == _comparable(_records(embedded))

    # A second job on the same sink and workers: the ventilator's score threshold travels
    # with the tiles (the workers were started without one), and records carry their job.
    strict = procs.start("ventilate", str(image_dir), "--model", model, "--bind", tiles,
                         "--sink-results", results, "--sink-events", events, "--no-progress",
                         "--score-threshold", "0.5", name="ventilate")
    assert procs.wait(strict, 240) == 0, procs.log(strict)
    jobs = {}
    for r in _records(out):
        jobs.setdefault(r["job"], []).append(r)
    assert len(jobs) == 2 and all(len(v) == 4 for v in jobs.values())
    first, second = sorted(jobs.values(), key=lambda v: -sum(len(r["detections"]) for r in v))
    scores = [d["score"] for r in second for d in r["detections"]]
    assert scores and min(scores) >= 0.5
    assert len(scores) < sum(len(r["detections"]) for r in first)
    for w in workers:
        assert procs.stop(w) == 0, procs.log(w)
    assert procs.stop(sink) == 0, procs.log(sink)


def _make_bad_inputs(d, photos):
    from PIL import Image

    astro = Image.open(photos[0]).convert("RGB")
    (d / "empty.jpg").write_bytes(b"")
    data = photos[0].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (d / "notes.txt").write_text("not an image\n")
    # A PNG whose header claims 30000 x 30000 pixels.
    import struct
    import zlib

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                 + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                                 + chunk(b"IEND", b""))
    Image.new("RGB", (1, 1), (255, 0, 0)).save(d / "one.png")
    astro.convert("CMYK").save(d / "cmyk.jpg")
    arr16 = (np.asarray(astro.convert("L"), np.uint16) * 257)
    Image.fromarray(arr16).save(d / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90° clockwise
    Image.open(photos[1]).convert("RGB").save(d / "rotated.jpg", exif=exif.tobytes())
    shutil.copy(photos[1], d / "chelsea.jpg")
    return {"empty.jpg": "empty_file", "truncated.jpg": "corrupt_image",
            "random.jpg": None, "notes.txt": "unsupported_format", "bomb.png": "too_large"}


def test_bad_inputs_one_record_each_and_exit_1(tmp_path, photos, models_ready):
    d = tmp_path / "mixed"
    d.mkdir()
    broken = _make_bad_inputs(d, photos)
    out = tmp_path / "mixed.jsonl"
    # --ext '*': every file, the notes.txt too (by default a folder's non-images are
    # skipped and counted, not failed).
    p = _cli("run", str(d), "--model", "centerface", "--out", str(out), "--no-progress",
             "--max-pixels", "50000000", "--ext", "*")
    assert p.returncode == 1, p.stdout + p.stderr
    lines = out.read_text().splitlines()
    recs = {json.loads(line)["image"].split("/")[-1]: json.loads(line) for line in lines}
    files = sorted(f.name for f in d.iterdir())
    assert sorted(recs) == files  # exactly one record per file
    assert len(lines) == len(files)
    for name, kind in broken.items():
        err = recs[name]["error"]
        assert err is not None and err["message"], name
        assert recs[name]["detections"] == []
        if kind:
            assert err["type"] == kind, (name, err)
    for name in ("one.png", "cmyk.jpg", "sixteen.png", "rotated.jpg", "chelsea.jpg"):
        assert recs[name]["error"] is None, (name, recs[name]["error"])
    # chelsea is 451 x 300 as stored; EXIF orientation 6 makes it 300 x 451.
    assert (recs["rotated.jpg"]["width"], recs["rotated.jpg"]["height"]) == (300, 451)
    for name in ("cmyk.jpg", "sixteen.png"):  # the astronaut's face survives conversion
        assert any(x["score"] > 0.6 for x in recs[name]["detections"]), recs[name]
    assert "6 failed" not in p.stdout and "5 failed" in p.stdout


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _run_until_busy(tmp_path, procs, *extra):
    """A `zmqvision run` over a few large images, returned once tiles are being done."""
    from PIL import Image

    big = tmp_path / "big"
    big.mkdir()
    photo = Image.open(ROOT / "examples" / "images" / "astronaut.jpg").resize((3000, 3000))
    for i in range(5):
        photo.save(big / f"p{i}.jpg")
    events = ipc(tmp_path, "events")
    run = procs.start("run", str(big), "--events", events, "--out", str(tmp_path / "r.jsonl"),
                      "--no-progress", *extra, name="run")
    wait_progress(events, 1, alive=lambda: run.poll() is None)
    return run


def _assert_group_gone(pgid: int, within: float) -> None:
    deadline = time.monotonic() + within
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(pgid), "a child of `run` outlived it"


def test_ctrl_c_mid_job_stops_everything(tmp_path, procs, models_ready):
    """SIGINT while tiles are in flight: `run` exits 130 (interrupted) promptly and no
    child outlives it."""
    run = _run_until_busy(tmp_path, procs)
    run.send_signal(signal.SIGINT)
    assert procs.wait(run, 30) == 130, procs.log(run)
    _assert_group_gone(run.pid, 15)


def test_detect_leaves_no_child_processes(photos, models_ready):
    import multiprocessing

    detect([str(photos[0])], model="blazeface-short")
    assert multiprocessing.active_children() == []


def test_detect_from_a_plain_script_needs_no_main_guard(tmp_path, photos, models_ready):
    script = tmp_path / "script.py"
    script.write_text(
        "import zmqvision\n"
        f"recs = zmqvision.detect([{str(photos[0])!r}], model='blazeface-short')\n"
        "print(len(recs), recs[0]['error'], len(recs[0]['detections']))\n"
    )
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    n, err, dets = p.stdout.split()
    assert (n, err) == ("1", "None") and int(dets) >= 1


def test_children_stop_when_run_is_killed(tmp_path, procs, models_ready):
    """SIGKILL leaves no chance to clean up: the children notice their parent is gone."""
    run = _run_until_busy(tmp_path, procs, "--workers", "2")
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    _assert_group_gone(run.pid, 20)


def test_tiles_cut_smaller_than_the_input_are_enlarged_and_recorded(tmp_path, photos,
                                                                     models_ready):
    out = tmp_path / "t.jsonl"
    p = _cli("run", str(photos[0]), "--model", "centerface", "--tile", "256",
             "--input-size", "640", "--out", str(out), "--no-progress")
    assert p.returncode == 0, p.stdout + p.stderr
    (rec,) = _records(out)
    tiling = rec["settings"]["tiling"]
    assert tiling["tile_size"] == [256, 256] and tiling["input_size"] == [640, 640]
    w, h = rec["width"], rec["height"]
    assert rec["tiles"] == len(plan_tiles(w, h, (256, 256), tiling["overlap"], False))
    assert rec["detections"], "the astronaut's face, enlarged 2.5x, is still found"
    for d in rec["detections"]:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_one_image_runs_in_this_process_with_the_latency_hint(tmp_path, photos,
                                                               models_ready):
    out = tmp_path / "one.jsonl"
    p = _cli("run", str(photos[0]), "--out", str(out), "--no-progress", "-v")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "one process: the sink and the worker (LATENCY hint) run as threads" in p.stderr
    (rec,) = _records(out)
    ref, spec = reference([photos[0]], "centerface")
    assert_same([rec], ref, spec)


def test_sink_and_worker_as_threads_equal_reference(tmp_path, photos, models_ready):
    """The in-process path forced on several images and tiles: the same messages over
    inproc endpoints of one context must give the same records as the reference."""
    from zmqvision.run import RunPlan, run_job, single_image
    from zmqvision.sink import SinkConfig
    from zmqvision.ventilator import VentilateConfig
    from zmqvision.worker import WorkerConfig

    assert single_image(VentilateConfig(inputs=(str(photos[0]),))) == str(photos[0])
    assert single_image(VentilateConfig(inputs=tuple(str(p) for p in photos))) is None
    out = tmp_path / "threads.jsonl"
    job = VentilateConfig(inputs=tuple(str(p) for p in photos), input_size=(320, 320),
                          events="tcp://127.0.0.1:0")
    done = run_job(RunPlan(job=job, sink=SinkConfig(out=str(out), events="tcp://127.0.0.1:0"),
                           worker=WorkerConfig(input_size=(320, 320)), in_process=True))
    assert done.images == len(photos) and done.failed == 0
    records = sorted(_records(out), key=lambda r: r["image"])
    ref, spec = reference(photos, "centerface", input_size=(320, 320))
    assert_same(records, ref, spec)
    assert all(r["tiles"] > 1 for r in records)
    left = [t.name for t in threading.enumerate() if t.name.startswith(("zmqvision-", "zv-"))]
    assert left == [], "the sink and worker threads end with the job"


@pytest.mark.parametrize("several", [False, True], ids=["one image", "a folder"])
def test_a_missing_device_is_a_clear_job_failure(several, image_dir, photos, tmp_path,
                                                  models_ready):
    """No Intel GPU here: the run fails with exit 3 and OpenVINO's list of devices, with
    no traceback, whether the worker is a thread (one image) or a process (a folder)."""
    target = str(image_dir) if several else str(photos[0])
    p = _cli("run", target, "--device", "GPU", "--out", str(tmp_path / "g.jsonl"),
             "--no-progress", timeout=120)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "OpenVINO device 'GPU' is not available on this machine" in p.stderr
    assert "available devices: CPU" in p.stderr
    assert "Traceback" not in p.stderr, p.stderr


def test_jpegs_decoded_reduced_for_shrunk_tiles_give_nearly_the_same_detections(
        photos, tmp_path, models_ready):
    """Cuts of 600 px shrunk to the SSD's 300: each JPEG is decoded at half size (DCT
    scaling) instead of in full and then shrunk; the job finds the same objects."""
    from PIL import Image

    d = tmp_path / "big"
    d.mkdir()
    for p in photos:
        im = Image.open(p).convert("RGB")
        im.resize((im.width * 3, im.height * 3)).save(d / p.name, quality=92)
    outs, logs = {}, {}
    for mode, extra in (("reduced", []), ("full", ["--full-decode"])):
        outs[mode] = tmp_path / f"{mode}.jsonl"
        p = _cli("run", "-v", str(d), "--model", "ssd-mobilenetv2-oid", "--tile", "600",
                 "--out", str(outs[mode]), "--no-progress", "--no-cache", *extra)
        assert p.returncode == 0, p.stdout + p.stderr
        logs[mode] = p.stdout + p.stderr
    assert f"{len(photos)} decoded at reduced size" in logs["reduced"]
    assert "0 decoded at reduced size" in logs["full"]
    reduced = {r["image"]: r for r in _records(outs["reduced"])}
    full = {r["image"]: r for r in _records(outs["full"])}
    assert reduced.keys() == full.keys() and len(full) == len(photos)
    assert all(r["settings"]["tiling"]["jpeg_draft"] for r in reduced.values())
    assert not any(r["settings"]["tiling"]["jpeg_draft"] for r in full.values())
    confident, overlaps = 0, []
    for image, rec in full.items():
        assert (rec["width"], rec["height"]) == (reduced[image]["width"],
                                                 reduced[image]["height"])
        for det in rec["detections"]:
            if det["score"] < 0.5:
                continue
            confident += 1
            overlaps.append(max((_iou(o["box"], det["box"]) for o in reduced[image]["detections"]
                                 if o["label"] == det["label"]), default=0.0))
    # Every object is found again; most boxes are the same to IoU 0.8. (A box merged from
    # pieces at cut borders may be merged from other pieces: seen once at IoU 0.52.)
    assert confident >= 4 and min(overlaps) > 0.5, overlaps
    assert sum(x > 0.8 for x in overlaps) >= 0.8 * confident, overlaps
