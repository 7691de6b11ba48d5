"""CenterFace's five landmarks: decoded on request, in the right places on a real face,
carried by ``Detections`` through tile → image mapping and the merge, and absent (with
results unchanged) when not asked for."""

from __future__ import annotations

import numpy as np
import pytest

from tests.faces_samples import astronaut
from zmqvision.boxes import Detections
from zmqvision.faces.identify import detect_faces, detect_tile
from zmqvision.merge import MergeConfig, merge
from zmqvision.models import centerface, resolve
from zmqvision.tiling import letterbox, points_to_image_coords, to_image_coords

pytestmark = pytest.mark.timeout(120)

# Picked by hand from skimage's astronaut (512 × 512) on a 10× enlargement with a pixel
# grid, before looking at any model output: pupil centres, nose tip, mouth corners
# (image-left first), in continuous pixel coordinates.
ASTRONAUT_POINTS = np.array([[203.0, 101.0], [246.5, 102.5], [223.0, 127.0],
                             [203.5, 140.5], [243.5, 141.5]])
TOLERANCE_PX = 4.0  # the face is ~90 px wide: 4 px is under 5 % of it


@pytest.fixture(scope="module")
def detector(models_ready):
    from zmqvision.models.runtime import Detector

    return Detector(resolve("centerface").with_input_size(512, 512), threads=2)


def _raw(detector, image):
    pixels, scale = letterbox(image, detector.input_size)
    request = detector.compiled.create_infer_request()
    request.infer({0: detector.input_tensor(pixels)})
    return detector.outputs_of(request), scale


def test_landmarks_land_on_eyes_nose_and_mouth_corners(detector):
    outputs, scale = _raw(detector, astronaut())
    dets = centerface.decode(outputs, detector.spec, 0.5, landmarks=True)
    assert len(dets) == 1 and dets.landmarks is not None
    assert dets.landmarks.shape == (1, 5, 2)
    got = dets.landmarks[0] / scale
    err = np.linalg.norm(got - ASTRONAUT_POINTS, axis=1)
    assert (err < TOLERANCE_PX).all(), f"landmark errors {err.round(2)} px"


def test_without_landmarks_results_are_unchanged(detector):
    outputs, _ = _raw(detector, astronaut())
    plain = centerface.decode(outputs, detector.spec, 0.3)
    rich = centerface.decode(outputs, detector.spec, 0.3, landmarks=True)
    assert plain.landmarks is None
    assert np.array_equal(plain.boxes, rich.boxes)
    assert np.array_equal(plain.scores, rich.scores)
    assert np.array_equal(plain.labels, rich.labels)
    via_detector = detector.decode(outputs, 0.3)  # the worker's path: no landmarks
    assert via_detector.landmarks is None and np.array_equal(via_detector.boxes, plain.boxes)


def test_landmarks_survive_tiles_and_the_merge(detector):
    """Small cuts with a large overlap: the face is whole in some tiles and cut in
    others; after mapping to image pixels and merging, one face with its points."""
    image = astronaut()
    dets = detect_faces(image, detector, scales=[(200, 200)], overlap=0.5)
    assert len(dets) == 1 and dets.landmarks is not None
    err = np.linalg.norm(dets.landmarks[0] - ASTRONAUT_POINTS, axis=1)
    assert (err < TOLERANCE_PX).all(), f"landmark errors {err.round(2)} px"


def test_detect_tile_refuses_a_model_without_landmarks(models_ready):
    from zmqvision.models.runtime import Detector

    ssd = Detector(resolve("ssd-mobilenetv2-oid"), threads=1)
    with pytest.raises(ValueError, match="CenterFace"):
        detect_tile(ssd, np.zeros((300, 300, 3), np.uint8))


# ---------------------------------------------------------------- pure numpy


def _dets(boxes, scores, points=None):
    return Detections.of(boxes, scores, np.zeros(len(scores)), points)


def test_points_map_like_boxes():
    boxes = np.array([[10.0, 20.0, 50.0, 80.0]])
    points = np.array([[[10.0, 20.0], [50.0, 80.0], [30.0, 50.0]]])
    tile, scale = (100, 200, 400, 500), 0.5
    b = to_image_coords(boxes, tile, scale)
    p = points_to_image_coords(points, tile, scale)
    assert np.allclose(p[0, 0], b[0, :2]) and np.allclose(p[0, 1], b[0, 2:])
    assert np.allclose(p[0, 2], [160.0, 300.0])
    # not clipped to the tile: a point of a face cut by the border lies beyond it
    assert np.allclose(points_to_image_coords(np.array([[[-10.0, 0.0]]]), tile, 0.5),
                       [[[80.0, 200.0]]])


def test_take_concat_and_merge_carry_landmarks():
    pts = np.arange(3 * 5 * 2, dtype=np.float64).reshape(3, 5, 2)
    a = _dets([[0, 0, 10, 10], [100, 100, 110, 110]], [0.9, 0.5], pts[:2])
    b = _dets([[0, 0, 5, 10]], [0.95], pts[2:])  # a half copy of a's first box, better
    both = Detections.concat([a, b])
    assert both.landmarks is not None and np.array_equal(both.landmarks, pts)
    assert np.array_equal(both.take([2, 0]).landmarks, pts[[2, 0]])
    merged = merge(both, MergeConfig())
    assert len(merged) == 2
    # NMM: the keeper (the better, cut copy) grows to the union box and takes the
    # points of its cluster's largest (most complete) member
    assert np.array_equal(merged.boxes[0], [0, 0, 10, 10])
    assert merged.scores[0] == np.float32(0.95)
    assert np.array_equal(merged.landmarks, pts[[0, 1]])
    # NMS keeps the keeper's box, so its own points
    nms = merge(both, MergeConfig(method="nms"))
    assert np.array_equal(nms.boxes[0], [0, 0, 5, 10])
    assert np.array_equal(nms.landmarks, pts[[2, 1]])


def test_concat_drops_landmarks_unless_every_part_has_them():
    a = _dets([[0, 0, 10, 10]], [0.9], np.zeros((1, 5, 2)))
    b = _dets([[20, 0, 30, 10]], [0.8])
    assert Detections.concat([a, b]).landmarks is None
    assert Detections.concat([a, Detections.empty()]).landmarks is not None
    assert merge(Detections.concat([a, b])).landmarks is None


def test_inconsistent_landmarks_are_refused():
    with pytest.raises(ValueError, match="landmarks"):
        _dets([[0, 0, 10, 10]], [0.9], np.zeros((2, 5, 2)))
    with pytest.raises(ValueError, match="landmarks"):
        _dets([[0, 0, 10, 10]], [0.9], np.zeros((1, 10)))
