"""``--format coco --embed-file`` through the real pipeline (`zmqvision run`, the real
efficientnet-lite0, real photos): each COCO image entry names the ``.npy`` row of its
embedding, the row its journaled record names, holding the vector the model gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.integration.test_classify import records, reference, run
from tests.test_classify import MODEL  # noqa: F401 - the model this run uses

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_coco_images_name_their_embedding_rows(image_dir, tmp_path, classifier):
    out, npy = tmp_path / "out.json", tmp_path / "emb.npy"
    p = run(str(image_dir), "--out", str(out), "--format", "coco", "--embed",
            "--embed-file", str(npy), "--no-cache")
    assert p.returncode == 0, p.stdout + p.stderr
    coco = json.loads(out.read_text())
    journal = records(tmp_path / "out.json.journal.jsonl")
    arr = np.load(npy, mmap_mode="r")
    rows = {i["file_name"].rsplit("/", 1)[-1]: i["embedding_row"] for i in coco["images"]}
    assert rows == {n: r["embedding_row"] for n, r in journal.items()}
    assert sorted(rows.values()) == list(range(len(rows))) == list(range(arr.shape[0]))
    assert '"embedding"' not in out.read_text()  # no vector inline
    for name, row in rows.items():
        ((_, _, emb),) = reference(classifier, image_dir / name, embed=True)
        assert np.array_equal(arr[row], emb)
