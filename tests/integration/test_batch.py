"""`zmqvision run --batch 4` and a Pool with batched workers (what `serve --batch 4`
starts) against plain `zmqvision run`: real processes, the real CenterFace model, real
photos from scikit-image, cut into many tiles. The records must be equal, field for
field: a batch changes how tiles reach the device, never the answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from tests.conftest import ROOT, wait_until
from zmqvision import results

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SAME = ("width", "height", "model", "detections", "error", "hash", "tiles", "settings")
ARGS = ("--model", "centerface", "--score-threshold", "0.05", "--no-cache", "--no-progress")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four photos, enlarged so that each is several 640 px tiles (the astronaut's face
    among them)."""
    d = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = Image.fromarray(getattr(skimage.data, name)()[..., :3])
        img.resize((img.width * 2, img.height * 2)).save(d / f"{name}.png")
    return d


def _run(photos: Path, out: Path, *extra: str) -> dict[str, dict]:
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(photos), "--out",
                        str(out), *ARGS, *extra], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stdout + p.stderr
    return {Path(r["image"]).name: r for r in results.read_jsonl(out)}


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory, models_ready) -> dict[str, dict]:
    return _run(photos, tmp_path_factory.mktemp("ref") / "ref.jsonl")


def test_run_batch_4_records_equal_run(photos, reference, tmp_path):
    batched = _run(photos, tmp_path / "b.jsonl", "--batch", "4")
    assert set(batched) == set(reference)
    assert sum(r["tiles"] for r in reference.values()) >= 8
    assert sum(len(r["detections"]) for r in reference.values()) >= 1
    for name, ref in reference.items():
        assert {k: batched[name][k] for k in SAME} == {k: ref[k] for k in SAME}, name


def test_a_pool_of_batched_workers_answers_as_run(photos, reference):
    """`serve --batch 4` builds this Pool: its workers batch the tiles of every request."""
    from zmqvision import Pool

    with Pool(model="centerface", batch=4, cache=None, score_threshold=0.05) as pool:
        wait_until(pool.workers_alive, 120, "the pool's worker")
        futures = {p.name: pool.submit(str(p)) for p in sorted(photos.iterdir())}
        for name, f in futures.items():
            record = f.result(timeout=300)
            for k in ("width", "height", "model", "detections", "error", "tiles"):
                assert record[k] == reference[name][k], (name, k)
