"""Two-stage jobs and the result cache through the real pipeline (`zmqvision run`, real
centerface + mobilefacenet and plates-det + plates-rec, real sockets, a real SQLite
cache), on small images:

- a second `--identify` run and a second `--model plates` run are answered wholly from
  the cache (the summary: every image cached, 0 tiles; no stage-1 tile, so no object was
  merged and no crop cut) with the records inference gave, apart from ``job`` and
  ``cached`` (docs/cache.md);
- a person enrolled between two runs is named from the cached embeddings, and that
  record equals the one a run without the cache computes;
- an entry of the format before issue 21 (no stage 2) under a two-stage key is a miss:
  computed again, the same record, and the entry replaced by a whole one;
- the detector alone (one stage) never meets a two-stage job's entries.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import msgpack
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.faces_samples import astronaut
from tests.test_plates_samples import PLATE_TEXTS, photo, plate_scene

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "Eileen Collins"
SUMMARY = re.compile(r"(\d+) images?, (\d+) failed, (\d+) cached, (\d+) tiles")


def run(inputs, out, *args) -> tuple[tuple[int, ...], dict[str, dict]]:
    """(images, failed, cached, tiles) of the summary, and the records by file name."""
    p = subprocess.run(
        [sys.executable, "-m", "zmqvision", "run", str(inputs), "--out", str(out),
         "--no-progress", "--workers", "1", *args],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log
    m = SUMMARY.search(log)
    assert m, log
    with open(out) as fh:
        recs = [json.loads(line) for line in fh if line.strip()]
    return tuple(int(g) for g in m.groups()), {r["image"].rsplit("/", 1)[-1]: r for r in recs}


def without(rec: dict, *keys: str) -> dict:
    return {k: v for k, v in rec.items() if k not in keys}


def same(a: dict[str, dict], b: dict[str, dict], *differ: str) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert without(a[name], "job", "cached", *differ) == \
            without(b[name], "job", "cached", *differ), name


def test_identify_second_run_is_cached_and_names_whoever_is_enrolled_now(models_ready,
                                                                         tmp_path):
    from zmqvision.faces.embed import FaceEmbedder
    from zmqvision.faces.gallery import Gallery
    from zmqvision.faces.identify import largest_face_embedding
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(astronaut()).save(inputs / "astronaut.png")
    photo("coffee", (400, 300)).save(inputs / "coffee.png")  # no face: no stage 2
    cache = f"sqlite://{tmp_path / 'cache.sqlite3'}"
    url = f"sqlite://{tmp_path / 'faces.sqlite3'}"
    job = ("--identify", "--gallery", url)

    counts, first = run(inputs, tmp_path / "1.jsonl", *job, "--cache", cache)
    assert counts[:3] == (2, 0, 0) and counts[3] > 0
    (face,) = first["astronaut.png"]["detections"]
    assert face["identity"] is None and len(face["landmarks"]) == 5  # nobody enrolled
    assert first["coffee.png"]["detections"] == []

    counts, again = run(inputs, tmp_path / "2.jsonl", *job, "--cache", cache)
    assert counts == (2, 0, 2, 0)  # all from the cache: no tile, so no crop
    same(first, again)
    assert all(r["cached"] for r in again.values())

    gallery = Gallery.open(url)  # she is enrolled between two runs
    emb, _ = largest_face_embedding(astronaut(), Detector(resolve("centerface"), threads=1),
                                    FaceEmbedder(threads=1))
    gallery.enroll(NAME, emb[None], {"photos": ["astronaut.png"]})
    gallery.close()
    counts, named = run(inputs, tmp_path / "3.jsonl", *job, "--cache", cache)
    assert counts == (2, 0, 2, 0)  # still no inference
    (face,) = named["astronaut.png"]["detections"]
    assert face["identity"]["name"] == NAME and face["identity"]["similarity"] > 0.99
    same(first, named, "detections")
    # ... and it is the record inference gives with the gallery as it is now
    counts, computed = run(inputs, tmp_path / "4.jsonl", *job, "--no-cache")
    assert counts[2] == 0 and counts[3] > 0
    same(computed, named)


def _entries(db) -> list[tuple[str, dict]]:
    with sqlite3.connect(db) as c:
        return [(k, msgpack.unpackb(v, raw=False))
                for k, v in c.execute("SELECT key, value FROM results")]


def test_plates_second_run_is_cached_and_an_old_entry_is_a_miss(models_ready, tmp_path):
    image, _ = plate_scene("coffee", list(PLATE_TEXTS[:4]), [160, 200, 180, 220],
                           [0, 4, -3, 2], size=(1000, 750), seed=1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(image).save(inputs / "plates.png")
    db = tmp_path / "cache.sqlite3"
    cache = ("--cache", f"sqlite://{db}")

    counts, first = run(inputs, tmp_path / "1.jsonl", "--model", "plates", *cache)
    assert counts[:3] == (1, 0, 0) and counts[3] > 0
    rec = first["plates.png"]
    assert rec["error"] is None and len(rec["detections"]) == 4
    assert all(d["text"] and len(d["corners"]) == 4 for d in rec["detections"])

    counts, again = run(inputs, tmp_path / "2.jsonl", "--model", "plates", *cache)
    assert counts == (1, 0, 1, 0)
    same(first, again)

    # The entry as a version before issue 21 would have written it: no stage 2.
    ((key, entry),) = _entries(db)
    assert "s2" in entry and entry["s2"]["texts"] == [d["text"] for d in rec["detections"]]
    del entry["s2"]
    with sqlite3.connect(db) as c:
        c.execute("UPDATE results SET value = ? WHERE key = ?",
                  (msgpack.packb(entry, use_bin_type=True), key))
    counts, redone = run(inputs, tmp_path / "3.jsonl", "--model", "plates", *cache)
    assert counts[:3] == (1, 0, 0) and counts[3] > 0  # a miss: computed again
    same(first, redone)
    ((key2, entry),) = _entries(db)
    assert key2 == key and "s2" in entry  # replaced by a whole entry

    # The detector alone is another key: it neither hits nor spoils the reader's entry.
    counts, alone = run(inputs, tmp_path / "4.jsonl", "--model", "plates-det", *cache)
    assert counts[:3] == (1, 0, 0)
    assert "text" not in alone["plates.png"]["detections"][0]
    assert len(_entries(db)) == 2
