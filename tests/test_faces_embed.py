"""FaceEmbedder: unit vectors, batch-of-2 handling, and similarities that tell the same
face from different real faces."""

from __future__ import annotations

import numpy as np
import pytest

from tests.faces_samples import AUGMENTATIONS, astronaut, astronaut_face, lfw_canvas, lfw_faces
from zmqvision.faces.align import align_many

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def models(models_ready):
    from zmqvision.faces.embed import FaceEmbedder
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    return Detector(resolve("centerface"), threads=2), FaceEmbedder(threads=2)


def _embed(models, image):
    from zmqvision.faces.identify import largest_face_embedding

    return largest_face_embedding(image, *models)[0]


def test_catalog_entry_and_model_shape(models):
    from zmqvision.models import CATALOG

    spec = CATALOG["mobilefacenet"]
    assert spec.task == "embedding" and spec.fetch is not None and spec.fetch.kind == "npm"
    assert "research" in spec.license
    assert models[1].dim == 192


def test_unit_vectors_and_odd_batches_match_single_faces(models):
    from zmqvision.faces.identify import detect_faces

    detector, embedder = models
    image = astronaut()
    crop = align_many(image, detect_faces(image, detector).landmarks)[0]
    crops = np.stack([crop, crop[:, ::-1], np.roll(crop, 3, axis=0)])
    together = embedder.embed(crops)  # 3: a pair, then one padded with itself
    assert together.shape == (3, 192) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    for i in range(3):
        alone = embedder.embed(crops[i])
        assert np.allclose(alone[0], together[i], atol=1e-4)
    assert embedder.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 192)
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(np.zeros((1, 100, 112, 3), np.uint8))


@pytest.mark.parametrize("change", ["mirror", "shift", "brighter", "half-res", "rotate+8"])
def test_the_same_face_changed_stays_similar(models, change):
    base = _embed(models, astronaut())
    assert float(base @ _embed(models, AUGMENTATIONS[change](astronaut()))) >= 0.9


def test_the_same_face_cropped_from_the_photo_is_the_same(models):
    assert float(_embed(models, astronaut()) @ _embed(models, astronaut_face())) >= 0.9


def test_different_real_faces_are_far_apart(models):
    """The astronaut against 20 LFW faces (other people), and those among themselves
    (0, 36, 73 and 90 are one man: none of them is among the 20)."""
    from zmqvision.faces.identify import NoFace

    base = _embed(models, astronaut())
    found = []
    for face in lfw_faces()[1:21]:
        try:
            found.append(_embed(models, lfw_canvas(face)))
        except NoFace:  # a few 25-px faces, enlarged, are too blurred for CenterFace
            continue
    assert len(found) >= 15
    others = np.stack(found)
    assert float((others @ base).max()) < 0.4
    sims = others @ others.T
    off = sims[~np.eye(len(others), dtype=bool)]
    assert float(np.median(off)) < 0.3 and float(off.max()) < 0.6
