"""Why tile at all: on a large image with many small faces planted from a real photo,
tiles at the model's native scale find nearly all of them, once each, while the whole image
squeezed into the model's input finds far fewer."""

from __future__ import annotations

import pytest

from tests.conftest import example_module
from zmqvision import detect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    mod = example_module("make_mosaic")
    image, faces = mod.make_mosaic(4000, 3000, 60, seed=3)
    path = tmp_path_factory.mktemp("mosaic") / "mosaic.jpg"
    image.save(path, quality=92)
    return path, faces


def test_tiles_find_the_faces_whole_image_does_not(mosaic, models_ready):
    path, faces = mosaic
    tiled = detect([str(path)], model="centerface")[0]
    assert tiled["error"] is None and tiled["tiles"] > 1
    score = example_module("evaluate").score
    tiled_score = score([d["box"] for d in tiled["detections"]], faces)
    recall = tiled_score["recall"]
    assert recall >= 0.9, tiled_score
    assert tiled_score["duplicates"] == 0, "a face was reported more than once across tiles"
    assert tiled_score["false_positives"] <= 0.05 * len(faces), tiled_score

    whole = detect([str(path)], model="centerface", tile_size=(4000, 3000))[0]
    assert whole["tiles"] == 1
    whole_recall = score([d["box"] for d in whole["detections"]], faces)["recall"]
    assert whole_recall < 0.5 * recall, (whole_recall, recall)
