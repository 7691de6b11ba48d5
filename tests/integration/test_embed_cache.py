"""``--embed`` through the real pipeline (`zmqvision run`, the real efficientnet-lite0,
real photos): a second run is answered wholly from the result cache (SQLite, and a real
``redis-server``) with the records inference gave; ``--embed-file`` puts the vectors in a
``.npy`` that numpy maps, and ``--resume`` appends to it without moving the rows of the
records it keeps."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from tests.integration.test_classify import records, reference, run
from tests.test_classify import MODEL  # noqa: F401 - the model these runs use

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def without(rec: dict, *keys: str) -> dict:
    return {k: v for k, v in rec.items() if k not in keys}


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_second_embed_run_is_all_cached_with_equal_records(image_dir, tmp_path, store,
                                                           request):
    if store == "redis":
        cache = request.getfixturevalue("redis_server").url
    else:
        cache = f"sqlite://{tmp_path / 'cache.db'}"
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    p = run(str(image_dir), "--out", str(first), "--embed", "--cache", cache)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"4 images, 0 failed, 0 cached", p.stdout + p.stderr), p.stderr
    p = run(str(image_dir), "--out", str(second), "--embed", "--cache", cache)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"4 images, 0 failed, 4 cached, 0 tiles", p.stdout + p.stderr), p.stderr
    a, b = records(first), records(second)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name]["cached"] is False and b[name]["cached"] is True
        assert len(b[name]["embedding"]) == 1280
        assert without(a[name], "job", "cached") == without(b[name], "job", "cached")
    # The same job without --embed is another key: computed, not answered from these.
    p = run(str(image_dir), "--out", str(tmp_path / "c.jsonl"), "--cache", cache)
    assert re.search(r"4 images, 0 failed, 0 cached", p.stdout + p.stderr), p.stderr


def test_embed_file_rows_and_resume(image_dir, tmp_path, classifier):
    out, npy = tmp_path / "out.jsonl", tmp_path / "emb.npy"
    later = tmp_path / "later"
    later.mkdir()
    shutil.move(image_dir / "rocket.jpg", later / "rocket.jpg")
    p = run(str(image_dir), "--out", str(out), "--embed", "--embed-file", str(npy),
            "--no-cache")
    assert p.returncode == 0, p.stdout + p.stderr
    before = {n: r["embedding_row"] for n, r in records(out).items()}
    assert sorted(before.values()) == [0, 1, 2]
    kept = np.load(npy, mmap_mode="r").copy()
    assert kept.shape == (3, 1280) and kept.dtype == np.float32

    shutil.move(later / "rocket.jpg", image_dir / "rocket.jpg")
    p = run(str(image_dir), "--out", str(out), "--embed", "--embed-file", str(npy),
            "--no-cache", "--resume")
    assert p.returncode == 0, p.stdout + p.stderr
    recs = records(out)
    assert {n: r["embedding_row"] for n, r in recs.items() if n in before} == before
    assert recs["rocket.jpg"]["embedding_row"] == 3  # appended
    arr = np.load(npy, mmap_mode="r")
    assert arr.shape == (4, 1280) and np.array_equal(arr[:3], kept)  # old rows unmoved
    for name, rec in recs.items():
        assert "embedding" not in rec
        ((_, _, emb),) = reference(classifier, image_dir / name, embed=True)
        assert np.array_equal(arr[rec["embedding_row"]], emb)

    # --embed-file without --embed is a usage error.
    p = run(str(image_dir), "--out", str(tmp_path / "x.jsonl"), "--embed-file", str(npy))
    assert p.returncode == 2 and "needs --embed" in p.stderr
