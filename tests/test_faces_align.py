"""Alignment: the similarity transform is exact on exact data, the warp puts every
pixel where the transform says (half-pixel conventions included), and aligned crops of
a real face have their features where the template wants them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.faces_samples import astronaut
from zmqvision.faces.align import (
    CROP_SIZE,
    TEMPLATE,
    align,
    align_many,
    similarity_transform,
    warp_matrix,
)

pytestmark = pytest.mark.timeout(120)


def _similarity(angle_deg: float, scale: float, shift) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.c_[r, shift]


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


@pytest.mark.parametrize(("angle", "scale", "shift"), [
    (0.0, 1.0, (0, 0)), (17.0, 2.5, (300.0, -40.0)), (-130.0, 0.3, (5.5, 1000.25)),
])
def test_known_rotation_scale_and_shift_are_recovered(angle, scale, shift):
    truth = _similarity(angle, scale, shift)
    src = TEMPLATE * 1.7 + (11, 23)
    m = similarity_transform(src, _apply(truth, src))
    assert np.allclose(m, truth, atol=1e-9)


def test_least_squares_with_noise_and_no_reflection():
    rng = np.random.default_rng(0)
    truth = _similarity(25.0, 0.8, (40.0, 60.0))
    dst = _apply(truth, TEMPLATE) + rng.normal(0, 0.5, TEMPLATE.shape)
    m = similarity_transform(TEMPLATE, dst)
    assert np.allclose(m[:, :2], truth[:, :2], atol=0.02)
    assert np.allclose(m[:, 2], truth[:, 2], atol=1.5)

    def residual(mm):
        return ((_apply(mm, TEMPLATE) - dst) ** 2).sum()

    # least squares: no similarity nearby fits the noisy points better
    assert residual(m) <= residual(truth)
    for k in range(20):
        jitter = _similarity(rng.normal(0, 0.5), 1 + rng.normal(0, 0.01), rng.normal(0, 0.3, 2))
        near = np.c_[jitter[:, :2] @ m[:, :2], jitter[:, :2] @ m[:, 2] + jitter[:, 2]]
        assert residual(m) <= residual(near) + 1e-9, k
    # mirrored points: the best similarity is a rotation, never a reflection
    mirrored = TEMPLATE * [-1, 1]
    m = similarity_transform(mirrored, TEMPLATE)
    assert np.linalg.det(m[:, :2]) > 0
    with pytest.raises(ValueError):
        similarity_transform(np.ones((5, 2)), TEMPLATE)


def test_warp_samples_where_the_transform_says():
    """On an image whose red is x and green is y (pixel k has value k), bilinear
    sampling of a linear ramp is exact: each crop pixel holds the image coordinates the
    inverse transform gives for it (minus the half pixel of the convention)."""
    y, x = np.mgrid[0:256, 0:256]
    image = np.stack([x, y, np.zeros_like(x)], axis=2).astype(np.uint8)
    landmarks = _apply(_similarity(-12.0, 1.3, (70.0, 60.0)), TEMPLATE)
    crop = align(image, landmarks)
    inv = warp_matrix(landmarks)
    j, i = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE]
    where = np.stack([i, j], axis=2).reshape(-1, 2) @ inv[:, :2].T + inv[:, 2]
    want = (where - 0.5).reshape(CROP_SIZE, CROP_SIZE, 2)
    inside = ((want > 0) & (want < 255)).all(axis=2)
    assert inside.mean() > 0.9
    err = np.abs(crop[..., :2].astype(float) - want)[inside]
    assert err.max() <= 1.0, err.max()


def test_a_rotated_photo_aligns_to_the_same_crop():
    """Rotate and enlarge the photo with a known transform, move the landmarks with
    it: both align to (nearly) the same pixels."""
    from PIL import Image

    image = astronaut()
    points = np.array([[203.0, 101.0], [246.5, 102.5], [223.0, 127.0],
                       [203.5, 140.5], [243.5, 141.5]])
    angle = 20.0  # Pillow rotates counter-clockwise about the image centre
    big = Image.fromarray(image).resize((768, 768), Image.Resampling.BICUBIC)
    rotated = np.asarray(big.rotate(angle, Image.Resampling.BICUBIC))
    a = np.deg2rad(angle)
    c = np.array([384.0, 384.0])
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    moved = (points * 1.5 - c) @ rot.T + c
    one, two = align(image, points), align(rotated, moved)
    diff = np.abs(one.astype(float) - two.astype(float))
    assert diff.mean() < 6.0, diff.mean()


def test_aligned_astronaut_has_her_features_at_the_template(models_ready):
    """Re-detected on the aligned crop (on a grey margin), the landmarks are where the
    fitted transform puts the original ones (eyes and nose within 2 px); the eyes' centre
    is within 3 px of the template's and their distance within 15 % (single eyes may
    sit further off: a least-squares fit of five points, her wide smile pulls on it)."""
    from zmqvision.faces.identify import detect_faces
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    detector = Detector(resolve("centerface"), threads=2)
    image = astronaut()
    dets = detect_faces(image, detector)
    assert len(dets) == 1 and dets.landmarks is not None
    crop = align_many(image, dets.landmarks)[0]
    pad = 56
    canvas = np.full((CROP_SIZE + 2 * pad, CROP_SIZE + 2 * pad, 3), 128, np.uint8)
    canvas[pad:pad + CROP_SIZE, pad:pad + CROP_SIZE] = crop
    again = detect_faces(canvas, detector)
    assert len(again) == 1 and again.landmarks is not None
    seen = again.landmarks[0] - pad
    m = similarity_transform(dets.landmarks[0], TEMPLATE)
    expected = _apply(m, dets.landmarks[0]) + 0.5  # template convention → continuous
    err = np.linalg.norm(seen - expected, axis=1)
    assert (err[:3] < 2.0).all(), err.round(2)
    assert (err < 3.0).all(), err.round(2)
    centre = np.linalg.norm(seen[:2].mean(axis=0) - (TEMPLATE[:2].mean(axis=0) + 0.5))
    assert centre < 3.0, centre
    span, want = (np.linalg.norm(p[1] - p[0]) for p in (seen, TEMPLATE))
    assert abs(span / want - 1) < 0.15, span


def test_a_face_at_the_border_gets_black_outside_the_image():
    image = astronaut()
    points = TEMPLATE - (30, 40)  # the crop reaches beyond the top-left corner
    crop = align(image, points)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert (crop[:5, :5] == 0).all() and crop[-5:, -5:].any()
    assert (align(image, TEMPLATE + 5000) == 0).all()
