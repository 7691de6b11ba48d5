"""The single-process reference, end to end (issue 21's test): enrol a person from one
photo, plant her face several times (sizes, slight rotations, brightness) among other
real faces in a large image made of real photos; she is found and named, the others
are not named at all."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance

from tests.faces_samples import astronaut, astronaut_face, lfw_canvas, lfw_faces

pytestmark = pytest.mark.timeout(300)

WIDTH, HEIGHT, CELL = 2000, 1500, 250


def _background() -> Image.Image:
    """2 × 2 real photos (no face among them: coffee, cat, rocket, motorcycle)."""
    photos = [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.stereo_motorcycle()[0]]
    canvas = Image.new("RGB", (WIDTH, HEIGHT))
    for k, p in enumerate(photos):
        im = Image.fromarray(p).resize((WIDTH // 2, HEIGHT // 2), Image.Resampling.BILINEAR)
        canvas.paste(im, ((k % 2) * WIDTH // 2, (k // 2) * HEIGHT // 2))
    return canvas


def _plant(canvas: Image.Image, face: Image.Image, cell: tuple[int, int], angle: float,
           rng) -> tuple[float, float]:
    """Paste ``face`` rotated by ``angle`` (its own corners masked) into ``cell``; the
    face's centre in the image."""
    mask = Image.new("L", face.size, 255).rotate(angle, Image.Resampling.BILINEAR, expand=True)
    face = face.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    cx, cy = cell
    x = cx * CELL + int(rng.integers(0, max(1, CELL - face.width)))
    y = cy * CELL + int(rng.integers(0, max(1, CELL - face.height)))
    canvas.paste(face, (x, y), mask)
    return x + face.width / 2, y + face.height / 2


def _scene():
    """The image, her planted centres, the other faces' centres."""
    rng = np.random.default_rng(21)
    canvas = _background()
    cells = [(c, r) for r in range(HEIGHT // CELL) for c in range(WIDTH // CELL)]
    order = rng.permutation(len(cells))
    her, others = [], []
    head = Image.fromarray(astronaut_face(pad=30))  # ~151 × 177, face ~90 px wide
    plants = [(0.55, -8, 1.0), (0.7, 5, 1.25), (0.85, 0, 0.75), (1.0, -4, 1.0),
              (1.2, 8, 1.15), (1.35, -6, 0.85), (0.65, 3, 0.8), (0.9, -3, 1.3),
              (1.1, 6, 1.0), (0.75, 0, 1.2)]
    for k, (scale, angle, light) in enumerate(plants):
        face = head.resize((round(head.width * scale), round(head.height * scale)),
                           Image.Resampling.BILINEAR)
        face = ImageEnhance.Brightness(face).enhance(light)
        her.append(_plant(canvas, face, cells[order[k]], angle, rng))
    faces = lfw_faces()
    for k, i in enumerate(range(1, 100, 4)):  # 25 other people
        side = int(rng.integers(90, 140))
        face = Image.fromarray(lfw_canvas(faces[i], side=side, margin=side // 6))
        others.append(_plant(canvas, face, cells[order[len(plants) + k]],
                             float(rng.uniform(-5, 5)), rng))
    return np.asarray(canvas), her, others


@pytest.fixture(scope="module")
def pipeline(models_ready, tmp_path_factory):
    from zmqvision.faces.embed import FaceEmbedder
    from zmqvision.faces.gallery import Gallery
    from zmqvision.faces.identify import largest_face_embedding
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    detector = Detector(resolve("centerface"), threads=2)
    embedder = FaceEmbedder(threads=2)
    gallery = Gallery.open(f"sqlite://{tmp_path_factory.mktemp('g') / 'faces.sqlite3'}")
    emb, _ = largest_face_embedding(astronaut(), detector, embedder)  # her one photo
    gallery.enroll("Eileen Collins", emb[None], {"photos": ["astronaut.png"]})
    yield detector, embedder, gallery
    gallery.close()


def _nearest(faces, point):
    centres = np.array([[(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2] for f in faces])
    d = np.linalg.norm(centres - point, axis=1)
    i = int(np.argmin(d))
    return faces[i], float(d[i])


def test_she_is_named_wherever_planted_and_nobody_else_is(pipeline):
    from zmqvision.faces.identify import identify_faces

    image, her, others = _scene()
    assert image.shape == (HEIGHT, WIDTH, 3)
    faces = identify_faces(image, *pipeline)
    assert faces, "no face found at all"
    named = [f for f in faces if f.name is not None]
    # recall: her planted faces, each found (a face within 40 px) and named
    hits = 0
    for centre in her:
        face, dist = _nearest(faces, centre)
        hits += dist < 40 and face.name == "Eileen Collins"
    assert hits / len(her) >= 0.9, f"named {hits} of {len(her)}"
    # precision: every name given is at one of her plants
    for face in named:
        dist = min(_nearest([face], c)[1] for c in her)
        assert dist < 40, f"a wrong name at {face.box} ({face.similarity:.3f})"
    # the other people: found, and unknown
    found_others = 0
    for centre in others:
        face, dist = _nearest(faces, centre)
        if dist < 40:
            found_others += 1
            assert face.name is None, face.record()
    assert found_others >= 0.8 * len(others)


def test_unknown_faces_get_none_and_an_empty_image_nothing(pipeline):
    from zmqvision.faces.identify import identify_faces

    detector, embedder, gallery = pipeline
    lone = lfw_canvas(lfw_faces()[5])
    faces = identify_faces(lone, detector, embedder, gallery)
    assert len(faces) == 1 and faces[0].name is None
    assert faces[0].similarity < gallery.threshold
    assert identify_faces(skimage.data.coffee(), detector, embedder, gallery) == []
    rec = identify_faces(astronaut(), detector, embedder, gallery)[0].record()
    assert rec["name"] == "Eileen Collins" and rec["similarity"] > 0.99
    assert len(rec["landmarks"]) == 5
