"""`zmqvision run --identify`: two-stage recognition over the pool, equal to the
single-process reference (``faces.identify.identify_faces``).

The scene is test_faces_identify's: four real photos, the astronaut's face planted ten
times (sizes, rotations, brightness) and 25 other real faces (LFW), 2000 × 1500. She is
enrolled from her one photo. The pipeline's records must name her where the reference
does, nobody else, and give every face the reference's box, landmarks and similarity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.faces_samples import astronaut
from tests.test_faces_identify import _scene

pytestmark = pytest.mark.timeout(600)

NAME = "Eileen Collins"


@pytest.fixture(scope="module")
def scene(models_ready, tmp_path_factory):
    """The scene as a PNG (lossless: the run reads the reference's very pixels), a
    gallery with her enrolled, and the reference's faces."""
    from zmqvision.faces.embed import FaceEmbedder
    from zmqvision.faces.gallery import Gallery
    from zmqvision.faces.identify import identify_faces, largest_face_embedding
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    d = tmp_path_factory.mktemp("two-stage")
    image, her, _ = _scene()
    inputs = d / "in"
    inputs.mkdir()
    Image.fromarray(image).save(inputs / "scene.png")
    Image.fromarray(astronaut()).save(inputs / "astronaut.png")
    url = f"sqlite://{d / 'faces.sqlite3'}"
    detector = Detector(resolve("centerface"), threads=2)
    embedder = FaceEmbedder(threads=2)
    gallery = Gallery.open(url)
    emb, _ = largest_face_embedding(astronaut(), detector, embedder)
    gallery.enroll(NAME, emb[None], {"photos": ["astronaut.png"]})
    reference = {"scene.png": identify_faces(image, detector, embedder, gallery),
                 "astronaut.png": identify_faces(astronaut(), detector, embedder, gallery)}
    gallery.close()
    return inputs, url, reference, her


def run_identify(inputs, url, out, *extra):
    p = subprocess.run(
        [sys.executable, "-m", "zmqvision", "run", str(inputs), "--identify", "--gallery",
         url, "--scales", "native,full", "--out", str(out), "--no-progress", "--no-cache",
         *extra], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def faces_of(record):
    """(box, score, landmarks, name, similarity) per face, rounded for comparison."""
    out = []
    for d in record["detections"]:
        ident = d["identity"]
        out.append(([round(v, 2) for v in d["box"]], round(d["score"], 4), d["landmarks"],
                    None if ident is None else ident["name"],
                    None if ident is None else ident["similarity"]))
    return out


def reference_faces(faces, threshold=0.6):
    return [([round(v, 2) for v in f.box], round(f.score, 4),
             np.round(f.landmarks, 2).tolist(), f.name,
             round(f.similarity, 4) if f.name is not None else None) for f in faces]


def test_run_identify_names_her_and_equals_the_reference(scene, tmp_path):
    inputs, url, reference, her = scene
    records = run_identify(inputs, url, tmp_path / "out.jsonl")
    by_image = {r["image"].rsplit("/", 1)[-1]: r for r in records}
    assert sorted(by_image) == ["astronaut.png", "scene.png"]  # one record per image
    for name, rec in by_image.items():
        assert rec["error"] is None, rec["error"]
        assert rec["settings"]["stage2"]["kind"] == "identify"
        assert faces_of(rec) == reference_faces(reference[name]), name
    scene_faces = by_image["scene.png"]["detections"]
    named = [d for d in scene_faces if d["identity"] is not None]
    assert {d["identity"]["name"] for d in named} == {NAME}  # no wrong name
    centres = np.array([[(d["box"][0] + d["box"][2]) / 2, (d["box"][1] + d["box"][3]) / 2]
                        for d in named])
    hits = sum(np.linalg.norm(centres - c, axis=1).min() < 40 for c in her)
    assert hits >= 9, f"named at {hits} of {len(her)} plants"
    assert sum(d["identity"] is None for d in scene_faces) >= 20  # the others: unknown
    # her own photo: her landmarks land on her face (docs/faces.md checks them in px)
    face = by_image["astronaut.png"]["detections"][0]
    assert face["identity"]["name"] == NAME and face["identity"]["similarity"] > 0.99
    assert len(face["landmarks"]) == 5


def test_a_photo_without_faces_and_tiles_without_faces(scene, tmp_path):
    """Regression: a stage-1 tile with no face sent its points as shape (0,) and the
    image failed ("inconsistent detections"); now its record is written at once, empty
    (no stage 2), and a face-less tile beside faces changes nothing."""
    import skimage.data

    _, url, _, _ = scene
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(skimage.data.coffee()).save(d / "coffee.png")
    wide = np.zeros((600, 1800, 3), np.uint8)  # the astronaut left, two empty tiles right
    wide[:512, :512] = astronaut()
    Image.fromarray(wide).save(d / "wide.png")
    recs = {r["image"].rsplit("/", 1)[-1]: r for r in
            run_identify(d, url, tmp_path / "out.jsonl")}
    assert recs["coffee.png"]["error"] is None and recs["coffee.png"]["detections"] == []
    assert recs["wide.png"]["error"] is None
    assert [x["identity"]["name"] for x in recs["wide.png"]["detections"]] == [NAME]


def test_points_on_the_wire_are_validated():
    from zmqvision import protocol as P
    from zmqvision.boxes import Detections

    pts = np.zeros((1, 5, 2))
    msg = P.Result(job="j", image="i", index=0, worker="w", model="m@1",
                   detections=Detections.of([[0, 0, 9, 9]], [0.9], [0], pts))
    frames = [bytes(memoryview(f)) for f in P.encode(msg)]
    back = P.decode(frames)
    assert back.detections.landmarks.shape == (1, 5, 2)
    bad = np.full((1, 5, 2), np.nan).astype("<f8").tobytes()
    with pytest.raises(P.ProtocolError, match="non-finite"):
        P.decode([*frames[:5], bad])
    with pytest.raises(P.ProtocolError, match="points frame"):
        P.decode([*frames[:5], bad[:-8]])
    import msgpack

    header = msgpack.unpackb(frames[1])
    header["points"] = P.MAX_POINTS + 1
    with pytest.raises(P.ProtocolError):
        P.decode([frames[0], msgpack.packb(header), *frames[2:]])
    header.update(points=5, embedding=3)
    with pytest.raises(P.ProtocolError, match="at most one"):
        P.decode([frames[0], msgpack.packb(header), *frames[2:]])
