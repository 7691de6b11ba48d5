"""Segmentation jobs and the result cache through the real pipeline (`zmqvision run`, the
real selfie-segmentation and deeplabv3 models, real sockets, a real SQLite cache), on
scikit-image's photos:

- a second run is answered wholly from the cache (the summary: every image cached,
  0 tiles) with the records inference gave, apart from ``job`` and ``cached``, and mask
  files byte-identical to the first run's;
- a hit under another ``--masks`` folder writes the same bytes there (the record names
  that folder);
- a ``--format coco`` pair: the RLE a hit makes from the cached PNG is the computed one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SUMMARY = re.compile(r"(\d+) images?, (\d+) failed, (\d+) cached, (\d+) tiles")


def run(inputs, out, model, *args) -> tuple[tuple[int, ...], dict[str, dict]]:
    """(images, failed, cached, tiles) of the summary, and the records by file name."""
    p = subprocess.run(
        [sys.executable, "-m", "zmqvision", "run", str(inputs), "--out", str(out),
         "--model", model, "--no-progress", "--workers", "1", "--threads", "1", *args],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log
    m = SUMMARY.search(log)
    assert m, log
    journal = out.with_name(out.name + ".journal.jsonl") if "coco" in args else out
    recs = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    return tuple(int(g) for g in m.groups()), {r["image"].rsplit("/", 1)[-1]: r for r in recs}


def same(a: dict[str, dict], b: dict[str, dict]) -> None:
    """Equal records but for job and cached, and each run's own masks folder; the mask
    files byte for byte."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = dict(a[name]), dict(b[name])
        for r in (x, y):
            r.pop("job"), r.pop("cached")
            r["segmentation"] = dict(r["segmentation"],
                                     mask=r["segmentation"]["mask"].rsplit("/", 1)[-1])
        assert x == y, name
        with open(a[name]["segmentation"]["mask"], "rb") as fa, \
                open(b[name]["segmentation"]["mask"], "rb") as fb:
            assert fa.read() == fb.read(), name


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])).save(
            d / f"{name}.png")
    return d


def test_second_selfie_run_is_all_cached_with_the_same_records_and_pngs(photos, tmp_path):
    cache = ("--cache", f"sqlite://{tmp_path / 'cache.sqlite3'}")
    counts, first = run(photos, tmp_path / "1.jsonl", "selfie-segmentation",
                        "--masks", str(tmp_path / "m1"), *cache)
    assert counts[:3] == (3, 0, 0) and counts[3] >= 3, counts
    assert not any(r["cached"] for r in first.values())
    counts, second = run(photos, tmp_path / "2.jsonl", "selfie-segmentation",
                         "--masks", str(tmp_path / "m1"), *cache)
    assert counts == (3, 0, 3, 0), counts  # 3 cached, 0 tiles
    assert all(r["cached"] for r in second.values())
    same(first, second)
    # another --masks folder: the hit writes the same bytes there, the record names it
    counts, third = run(photos, tmp_path / "3.jsonl", "selfie-segmentation",
                        "--masks", str(tmp_path / "m2"), *cache)
    assert counts == (3, 0, 3, 0), counts
    same(first, third)
    assert all(r["segmentation"]["mask"].startswith(str(tmp_path / "m2"))
               for r in third.values())
    assert sorted(p.name for p in (tmp_path / "m2").iterdir()) == sorted(
        p.name for p in (tmp_path / "m1").iterdir())  # no temporary file left


def test_deeplabv3_grid_coco_pair(photos, tmp_path):
    """A grid of tiles (--tile), COCO output: the second run's RLE, made from the cached
    PNG, is the one the stitcher's strips gave."""
    (photos / "coffee.png").unlink()
    job = ("--tile", "200x200", "--format", "coco",
           "--cache", f"sqlite://{tmp_path / 'cache.sqlite3'}")
    counts, first = run(photos, tmp_path / "1.json", "deeplabv3",
                        "--masks", str(tmp_path / "m1"), *job)
    assert counts[:3] == (2, 0, 0) and counts[3] > 2, counts
    counts, second = run(photos, tmp_path / "2.json", "deeplabv3",
                         "--masks", str(tmp_path / "m2"), *job)
    assert counts == (2, 0, 2, 0), counts
    same(first, second)
    assert all("rle" in c for r in second.values() for c in r["segmentation"]["classes"])
    doc1 = json.loads((tmp_path / "1.json").read_text())
    doc2 = json.loads((tmp_path / "2.json").read_text())
    assert [a["segmentation"] for a in doc1["annotations"]] == \
        [a["segmentation"] for a in doc2["annotations"]]
