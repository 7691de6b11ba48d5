"""Why tile at all: on a large image with many small faces planted from a real photo,
tiles at the model's native scale find nearly all of them, once each, while the whole image
squeezed into the model's input finds far fewer."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.conftest import ROOT
from zmqvision import detect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _make_mosaic_module():
    spec = importlib.util.spec_from_file_location("make_mosaic", ROOT / "examples" /
                                                  "make_mosaic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth, boxes, thr=0.3):
    """Per true face, how many predicted boxes overlap it (IoU ≥ thr); and boxes matching none."""
    hits = np.zeros(len(truth), int)
    false_pos = 0
    for b in boxes:
        matched = [i for i, t in enumerate(truth) if iou(t, b) >= thr]
        for i in matched:
            hits[i] += 1
        false_pos += not matched
    return hits, false_pos


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    mod = _make_mosaic_module()
    image, faces = mod.make_mosaic(4000, 3000, 60, seed=3)
    path = tmp_path_factory.mktemp("mosaic") / "mosaic.jpg"
    image.save(path, quality=92)
    return path, faces


def test_tiles_find_the_faces_whole_image_does_not(mosaic, models_ready):
    path, faces = mosaic
    tiled = detect([str(path)], model="centerface")[0]
    assert tiled["error"] is None and tiled["tiles"] > 1
    hits, fp = match(faces, [d["box"] for d in tiled["detections"]])
    recall = float(np.mean(hits > 0))
    assert recall >= 0.9, (recall, fp)
    assert int(np.max(hits)) == 1, "a face was reported more than once across tile borders"
    assert fp <= 0.05 * len(faces), fp

    whole = detect([str(path)], model="centerface", tile_size=(4000, 3000))[0]
    assert whole["tiles"] == 1
    whole_hits, _ = match(faces, [d["box"] for d in whole["detections"]])
    whole_recall = float(np.mean(whole_hits > 0))
    assert whole_recall < 0.5 * recall, (whole_recall, recall)
