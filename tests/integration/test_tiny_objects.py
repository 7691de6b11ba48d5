"""Tiny objects: --min-size enlarges cuts until a face of that size reaches what the model
finds reliably, and --scales mixes enlarged cuts with the whole image so large and tiny faces
are each found once.

The images are built from real photos (the astronaut's face over face-free photos, see
examples/make_mosaic.py) with faces of 14-36 px: smaller than the example mosaic's, and
below what CenterFace finds reliably at native scale (docs/tiling.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, example_module, ipc
from zmqvision import detect
from zmqvision.models import resolve
from zmqvision.scales import resolve_scales, summarize

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


SCORE = example_module("evaluate").score


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory):
    image, faces = example_module("make_mosaic").make_mosaic(2000, 1500, 60, (14, 36), seed=1)
    path = tmp_path_factory.mktemp("tiny") / "tiny.jpg"
    image.save(path, quality=92)
    return path, faces


def test_min_size_finds_tiny_faces_that_native_tiles_miss(tiny_faces, tmp_path, models_ready):
    path, faces = tiny_faces
    assert len(faces) >= 50
    assert all(14 <= f[2] - f[0] <= 36.5 for f in faces)
    out = tmp_path / "r.jsonl"
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(path), "--min-size",
                        "16", "--out", str(out), "--no-progress", "--events",
                        "tcp://127.0.0.1:0"], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    # The plan is printed before the job: cut, enlargement, tiles and cost.
    assert "182x182 px cuts enlarged x3.52 to 640x640" in p.stderr, p.stderr
    assert "154 tiles, 12.8x the inference of the default tiling (12 tiles)" in p.stderr
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["tiles"] == 154
    tiling = rec["settings"]["tiling"]
    assert tiling["scales"] == [[182, 182]] and tiling["min_size"] == 16
    assert tiling["input_size"] == [640, 640]
    planned = SCORE([d["box"] for d in rec["detections"]], faces)
    assert planned["recall"] >= 0.9, planned
    assert planned["precision"] >= 0.95, planned
    assert planned["duplicates"] == 0, planned

    native = detect([str(path)], model="centerface")[0]
    assert native["tiles"] == 12
    native_score = SCORE([d["box"] for d in native["detections"]], faces)
    assert native_score["recall"] <= planned["recall"] - 0.1, (native_score, planned)


def test_multi_scale_finds_large_and_tiny_faces_once_each(tmp_path, models_ready):
    widths = [300, 300] + [20] * 10
    image, faces = example_module("make_mosaic").make_mosaic(3000, 2400, seed=0, widths=widths)
    path = tmp_path / "mixed.jpg"
    image.save(path, quality=92)
    large = [f for f in faces if f[2] - f[0] > 100]
    tiny = [f for f in faces if f[2] - f[0] < 100]
    assert (len(large), len(tiny)) == (2, 10)

    rec = detect([str(path)], model="centerface", min_size=16, scales=("full",))[0]
    assert rec["error"] is None
    assert rec["settings"]["tiling"]["scales"] == ["full", [182, 182]]
    boxes = [d["box"] for d in rec["detections"]]
    for group in (large, tiny):
        s = SCORE(boxes, group)
        assert s["recall"] == 1.0 and s["duplicates"] == 0, s
    assert SCORE(boxes, faces)["false_positives"] == 0


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqvision", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "message"), [
    (("--tile", "300", "--min-size", "16"), "--tile and --min-size both choose the cut"),
    (("--model", "ssd-mobilenetv2-oid", "--min-size", "16"),
     "has no measured reliable object size"),
    (("--scales", "640,huge"), "'huge' is not a size"),
])
def test_plans_that_cannot_work_are_usage_errors(args, message, photos):
    p = _cli("run", str(photos[0]), *args, "--no-progress")
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr


def test_a_costly_plan_is_announced_with_a_warning(tiny_faces, tmp_path):
    """--min-size 3: 34 px cuts enlarged 18.8x, hundreds of times the default's inference. No
    sink runs, so the job gives up after --timeout, once the warning is out."""
    path, _ = tiny_faces
    spec = resolve("centerface")
    cost = summarize(spec, spec, resolve_scales(spec, min_size=3), 0.2, 2000, 1500).cost
    assert cost > 10
    p = _cli("ventilate", str(path), "--min-size", "3", "--timeout", "1",
             "--bind", "tcp://127.0.0.1:0",
             "--sink-results", ipc(tmp_path, "nobody-results"),
             "--sink-events", ipc(tmp_path, "nobody-events"), "--no-progress")
    assert p.returncode == 3, p.stdout + p.stderr
    assert "34x34 px cuts enlarged x18.82" in p.stderr
    assert f"warning: this tiling costs {cost:.0f}x the default's inference" in p.stderr
