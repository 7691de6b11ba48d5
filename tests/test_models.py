"""The catalog models on real photos, through real OpenVINO inference.

Expected values come from MODELS.md (checked independently of this code) and from
cross-checks between models: CenterFace and BlazeFace must agree on where the
astronaut's face is, and a DetectionOutput graph wrapped around the SSD must find the
same cat as our numpy SSD decoder.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import openvino as ov
import pytest
import skimage.data
from PIL import Image

from zmqvision.boxes import Detections
from zmqvision.models import (
    CATALOG,
    DEFAULT_MODEL,
    Detector,
    DeviceError,
    ModelNotFound,
    detection_output,
    model_file,
    resolve,
    ssd,
)
from zmqvision.models.catalog import OID_LABELS
from zmqvision.tiling import letterbox, to_image_coords


def iou(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def stretch(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize ignoring aspect (how MODELS.md measured whole photos)."""
    h, w = img.shape[:2]
    out = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    return out, (size[0] / w, size[1] / h)


def unstretch(boxes: np.ndarray, s: tuple[float, float]) -> np.ndarray:
    return boxes / [s[0], s[1], s[0], s[1]]


@pytest.fixture(scope="module")
def detectors(models_ready) -> dict[str, Detector]:
    return {name: Detector(spec, threads=2) for name, spec in CATALOG.items()
            if spec.task == "detection"}


@pytest.fixture(scope="module")
def photos_rgb() -> dict[str, np.ndarray]:
    return {n: getattr(skimage.data, n)() for n in ("astronaut", "chelsea", "coffee")}


# ---------------------------------------------------------------- catalog


@pytest.mark.timeout(10)
def test_catalog_names_and_refs():
    assert DEFAULT_MODEL in CATALOG
    assert {"centerface", "blazeface-short", "ssd-mobilenetv2-oid"} <= set(CATALOG)
    for name, spec in CATALOG.items():
        assert resolve(name) is spec
        assert spec.ref == f"{spec.name}@{spec.version}"
        assert spec.path is None and spec.fetch is not None
    assert CATALOG["ssd-mobilenetv2-oid"].labels[0] == "Bicycle"
    assert len(CATALOG["ssd-mobilenetv2-oid"].labels) == 23


@pytest.mark.timeout(10)
def test_oid_labels_match_the_label_map_checksum():
    """The label list typed into the catalog is exactly the npm file's bytes [0, 184)."""
    import hashlib

    fetch = CATALOG["ssd-mobilenetv2-oid"].fetch
    raw = ("???\n" + "\n".join(OID_LABELS) + "\n").encode()
    assert len(raw) == fetch.labels_range[1] - fetch.labels_range[0]
    assert hashlib.sha256(raw).hexdigest() == fetch.labels_sha256


@pytest.mark.timeout(10)
def test_unknown_model_lists_catalog():
    with pytest.raises(ModelNotFound) as err:
        resolve("yolo-nonexistent")
    assert isinstance(err.value, ValueError)
    for name in CATALOG:
        assert name in str(err.value)
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve("/nonexistent/dir/model.xml")


@pytest.mark.timeout(10)
def test_with_input_size():
    cf = CATALOG["centerface"]
    assert cf.input_size == (640, 640)
    small = cf.with_input_size(320, 256)
    assert small.input_size == (320, 256) and small.ref == cf.ref
    with pytest.raises(ValueError, match="multiples of 32"):
        cf.with_input_size(300, 300)
    with pytest.raises(ValueError, match="fixed input size"):
        CATALOG["blazeface-short"].with_input_size(256, 256)
    assert CATALOG["blazeface-short"].with_input_size(128, 128) is CATALOG["blazeface-short"]


@pytest.mark.timeout(10)
def test_describe_is_json():
    d = json.loads(json.dumps(CATALOG["ssd-mobilenetv2-oid"].describe()))
    assert d["ref"] == CATALOG["ssd-mobilenetv2-oid"].ref
    assert d["input_size"] == [300, 300] and d["labels"][7] == "Cat"
    for key in ("name", "version", "task", "family", "source", "sha256", "license",
                "score_threshold", "nms_threshold"):  # fmt: skip
        assert key in d


# ---------------------------------------------------------------- runtime


@pytest.mark.timeout(120)
def test_input_tensor_is_zero_copy_even_for_read_only_frames(detectors):
    det = detectors["ssd-mobilenetv2-oid"]
    w, h = det.input_size
    frame = bytes(np.random.default_rng(0).integers(0, 255, w * h * 3, dtype=np.uint8))
    pixels = np.frombuffer(frame, np.uint8).reshape(h, w, 3)  # read-only, like a zmq frame
    assert not pixels.flags.writeable
    tensor = det.input_tensor(pixels)
    assert np.shares_memory(tensor.data, pixels)
    assert tensor.data.ctypes.data == pixels.ctypes.data
    assert tuple(tensor.shape) == (1, h, w, 3)
    with pytest.raises(ValueError, match="uint8"):
        det.input_tensor(np.zeros((h, w + 1, 3), np.uint8))
    with pytest.raises(ValueError, match="contiguous"):
        det.input_tensor(np.zeros((h, 2 * w, 3), np.uint8)[:, ::2])


@pytest.mark.timeout(60)
def test_unavailable_device_names_available_ones(models_ready):
    available = ov.Core().available_devices
    for device in ("NOSUCHDEVICE", "MULTI:NOSUCHDEVICE,CPU"):
        with pytest.raises(DeviceError) as err:
            Detector(CATALOG["blazeface-short"], device=device)
        assert "NOSUCHDEVICE" in str(err.value)
        for d in available:
            assert d in str(err.value)


@pytest.mark.timeout(120)
def test_compiled_blob_cache_and_requests(models_ready, tmp_path):
    det = Detector(CATALOG["blazeface-short"], cache_dir=tmp_path / "ov", threads=1)
    assert det.optimal_requests() >= 1
    assert any((tmp_path / "ov").iterdir()), "OpenVINO wrote no compiled blob to CACHE_DIR"


@pytest.mark.timeout(120)
def test_decode_is_deterministic_and_outputs_are_copies(detectors, photos_rgb):
    det = detectors["ssd-mobilenetv2-oid"]
    px, _ = stretch(photos_rgb["chelsea"], det.input_size)
    request = det.compiled.create_infer_request()
    request.infer({0: det.input_tensor(px)})
    outs = det.outputs_of(request)
    first = det.decode(outs, 0.05)
    again = det.decode(outs, 0.05)
    request.infer({0: det.input_tensor(stretch(photos_rgb["coffee"], det.input_size)[0])})
    after_reuse = det.decode(outs, 0.05)  # the request was reused; our copies must not move
    other = Detector(CATALOG["ssd-mobilenetv2-oid"], threads=1).infer(px, 0.05)
    assert len(first) > 1
    for d in (again, after_reuse, other):
        np.testing.assert_array_equal(d.labels, first.labels)
        np.testing.assert_allclose(d.boxes, first.boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(d.scores, first.scores, rtol=0, atol=1e-5)
    assert np.all(np.diff(first.scores) <= 0), "detections must be sorted by score"


@pytest.mark.timeout(120)
def test_async_queue_matches_infer(detectors, photos_rgb):
    """The worker's path (AsyncInferQueue + callback decode) equals the reference path."""
    det = detectors["centerface"]
    px, _ = letterbox(photos_rgb["astronaut"], det.input_size)
    got: list[Detections] = []
    queue = ov.AsyncInferQueue(det.compiled, 2)
    queue.set_callback(lambda req, _: got.append(det.decode(det.outputs_of(req))))
    for _ in range(3):
        queue.start_async({0: det.input_tensor(px)}, None)
    queue.wait_all()
    ref = det.infer(px)
    assert len(got) == 3 and len(ref) >= 1
    for d in got:
        np.testing.assert_allclose(d.boxes, ref.boxes, atol=1e-3)


# ---------------------------------------------------------------- faces


ASTRONAUT_FACE = (179, 82, 273, 176)  # MODELS.md, BlazeFace, 512x512 image pixels


@pytest.mark.timeout(120)
def test_centerface_finds_astronaut_face(detectors, photos_rgb):
    det = detectors["centerface"]
    px, s = letterbox(photos_rgb["astronaut"], det.input_size)
    r = det.infer(px)
    assert len(r) == 1, r
    box = to_image_coords(r.boxes, (0, 0, 512, 512), s)[0]
    assert 0.85 <= r.scores[0] <= 0.97
    assert iou(box, ASTRONAUT_FACE) > 0.6, box
    assert r.labels[0] == 0 and CATALOG["centerface"].labels == ("face",)


@pytest.mark.timeout(120)
def test_centerface_other_input_size(models_ready, photos_rgb):
    """Variable input: at 512x512 (no resize at all) the same face comes out."""
    det = Detector(CATALOG["centerface"].with_input_size(512, 512), threads=2)
    assert det.input_size == (512, 512)
    r = det.infer(photos_rgb["astronaut"])
    assert len(r) == 1 and r.scores[0] > 0.85
    assert iou(r.boxes[0], ASTRONAUT_FACE) > 0.6


@pytest.mark.timeout(120)
def test_centerface_sees_no_face_on_cat_or_coffee(detectors, photos_rgb):
    det = detectors["centerface"]
    for name in ("chelsea", "coffee"):
        px, _ = letterbox(photos_rgb[name], det.input_size)
        assert len(det.infer(px)) == 0, name
    # and the cat's best score is low, not just under the line
    px, _ = letterbox(photos_rgb["chelsea"], det.input_size)
    assert len(det.infer(px, 0.2)) == 0


@pytest.mark.timeout(120)
def test_blazeface_astronaut_and_cat(detectors, photos_rgb):
    det = detectors["blazeface-short"]
    px, s = stretch(photos_rgb["astronaut"], det.input_size)
    r = det.infer(px)
    assert len(r) == 1
    assert abs(float(r.scores[0]) - 0.92) < 0.03
    np.testing.assert_allclose(unstretch(r.boxes, s)[0], ASTRONAUT_FACE, atol=6)
    cat, _ = stretch(photos_rgb["chelsea"], det.input_size)
    assert len(det.infer(cat)) == 0  # MODELS.md: 0.36, below the 0.5 default
    assert 0.25 < det.infer(cat, 0.05).scores[0] < 0.5


@pytest.mark.timeout(120)
def test_face_models_agree(detectors, photos_rgb):
    img = photos_rgb["astronaut"]
    cf = detectors["centerface"]
    bf = detectors["blazeface-short"]
    px, s = letterbox(img, cf.input_size)
    a = to_image_coords(cf.infer(px).boxes, (0, 0, 512, 512), s)[0]
    px, s2 = stretch(img, bf.input_size)
    b = unstretch(bf.infer(px).boxes, s2)[0]
    assert iou(a, b) > 0.6, (a, b)


# ---------------------------------------------------------------- SSD


@pytest.mark.timeout(10)
def test_ssd_anchors():
    a = ssd.anchors()
    assert a.shape == (1917, 4)
    # first anchor: layer 0 (19x19 grid), cell (0, 0), the reduced (0.1, ratio 1) box
    np.testing.assert_allclose(a[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1])
    # last anchor: layer 5 (1x1), the interpolated square between 0.95 and 1.0
    np.testing.assert_allclose(a[-1], [0.5, 0.5, np.sqrt(0.95), np.sqrt(0.95)])
    assert ssd.anchors() is a  # computed once


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "photo,label,score",
    [("chelsea", "Cat", 0.85), ("coffee", "Coffee cup", 0.56), ("astronaut", "Person", 0.58)],
)
def test_ssd_top_class(detectors, photos_rgb, photo, label, score):
    det = detectors["ssd-mobilenetv2-oid"]
    px, _ = stretch(photos_rgb[photo], det.input_size)
    r = det.infer(px)
    assert len(r) >= 1
    assert det.spec.labels[r.labels[0]] == label
    assert abs(float(r.scores[0]) - score) < 0.04


@pytest.mark.timeout(120)
def test_ssd_cat_box_and_letterbox_path(detectors, photos_rgb):
    """The pipeline letterboxes; the cat must survive that and its box map back."""
    det = detectors["ssd-mobilenetv2-oid"]
    img = photos_rgb["chelsea"]  # 451x300; the cat fills most of it
    px, s = stretch(img, det.input_size)
    stretched = unstretch(det.infer(px).boxes, s)[0]
    px, s = letterbox(img, det.input_size)
    assert not px[250:].any(), "letterbox pads the bottom with zeros"
    r = det.infer(px)
    assert det.spec.labels[r.labels[0]] == "Cat" and r.scores[0] > 0.7
    boxed = to_image_coords(r.boxes[:1], (0, 0, 451, 300), s)[0]
    assert iou(boxed, stretched) > 0.85
    assert boxed[2] - boxed[0] > 300 and boxed[3] - boxed[1] > 250  # box on the cat


# ---------------------------------------------------------------- DetectionOutput


def build_ssd_detection_output(xml, conf: float = 0.3) -> None:
    """Wrap the real SSD in OpenVINO's DetectionOutput op: a real [1,1,N,7] model.

    It takes BGR 0..255 like Open Model Zoo models (normalisation inside), decodes TF
    encodings (ty, tx, th, tw) by reordering them to (tx, ty, tw, th) with variances
    0.1, 0.1, 0.2, 0.2 (= 1 / the box coder scales) against our anchors as priors.
    """
    from openvino import opset8 as ops
    from openvino.preprocess import PrePostProcessor

    m = ov.Core().read_model(str(model_file(CATALOG["ssd-mobilenetv2-oid"])))
    ppp = PrePostProcessor(m)
    ppp.input().tensor().set_layout(ov.Layout("NHWC"))
    ppp.input().preprocess().reverse_channels().mean(127.5).scale(127.5)
    m = ppp.build()
    enc, cls = (m.outputs[i].get_node().input_value(0) for i in ssd.output_order(
        [(set(o.get_names()), tuple(o.get_shape())) for o in m.outputs]))  # fmt: skip
    a = ssd.anchors()
    n = len(a)
    loc = ops.gather(enc, ops.constant(np.array([1, 0, 3, 2], np.int64)), ops.constant(2))
    loc = ops.reshape(loc, ops.constant(np.array([1, n * 4], np.int64)), False)
    probs = ops.reshape(ops.sigmoid(cls), ops.constant(np.array([1, -1], np.int64)), False)
    half = a[:, 2:] / 2
    corners = np.concatenate([a[:, 1::-1] - half[:, ::-1], a[:, 1::-1] + half[:, ::-1]], 1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], (n, 1))
    priors = np.stack([corners.reshape(-1), var.reshape(-1)])[None].astype(np.float32)
    attrs = {
        "background_label_id": 0, "top_k": 200, "keep_top_k": [100],
        "code_type": "caffe.PriorBoxParameter.CENTER_SIZE", "share_location": True,
        "nms_threshold": 0.5, "confidence_threshold": conf, "clip_before_nms": True,
        "variance_encoded_in_target": False, "normalized": True,
    }  # fmt: skip
    det = ops.detection_output(loc, probs, ops.constant(priors), attrs)
    ov.save_model(ov.Model([det.output(0)], m.get_parameters(), "ssd_do"), str(xml))


@pytest.mark.timeout(180)
def test_detection_output_model_finds_the_same_cat(detectors, photos_rgb, tmp_path):
    xml = tmp_path / "ssd_do.xml"
    build_ssd_detection_output(xml)
    spec = resolve(str(xml))
    assert spec.family == "detection_output" and spec.input_size == (300, 300)
    assert spec.version == spec.sha256[:12] and spec.path == str(xml.resolve())
    assert spec.labels[:2] == ("class_0", "class_1") and len(spec.labels) == 24
    px, _ = stretch(photos_rgb["chelsea"], (300, 300))
    ours = detectors["ssd-mobilenetv2-oid"].infer(px)
    theirs = Detector(spec, threads=2).infer(px, 0.3)
    assert len(theirs) >= 1
    assert theirs.labels[0] == ours.labels[0] + 1  # raw ids keep the background slot
    assert abs(float(theirs.scores[0]) - float(ours.scores[0])) < 0.01
    assert iou(theirs.boxes[0], ours.boxes[0]) > 0.95
    # a labels file with the model's stem names those raw ids
    (tmp_path / "ssd_do.txt").write_text("???\n" + "\n".join(OID_LABELS) + "\n")
    named = resolve(str(xml))
    assert named.labels[theirs.labels[0]] == "Cat"


@pytest.mark.timeout(30)
def test_user_model_without_detection_output_is_refused(models_ready):
    with pytest.raises(ValueError, match="DetectionOutput"):
        resolve(str(models_ready["blazeface-short"]))


@pytest.mark.timeout(10)
def test_detection_output_decoder_rows():
    spec = replace(CATALOG["ssd-mobilenetv2-oid"], family="detection_output",
                   input_size=(200, 100), nms_threshold=0.5)  # fmt: skip
    rows = np.array(
        [
            [0, 3, 0.9, 0.1, 0.2, 0.5, 0.6],
            [0, 3, 0.8, 0.11, 0.2, 0.5, 0.6],  # duplicate of the first: NMS removes it
            [0, 1, 0.4, 0.0, 0.0, 1.2, 0.5],  # clipped to the input
            [0, 2, 0.1, 0.0, 0.0, 0.1, 0.1],  # below threshold
            [-1, 0, 0.0, 0, 0, 0, 0],  # end marker: rows after it are ignored
            [0, 5, 0.99, 0.0, 0.0, 0.5, 0.5],
        ],
        np.float32,
    )[None, None]
    d = detection_output.decode([rows], spec, 0.3)
    assert d.labels.tolist() == [3, 1]
    np.testing.assert_allclose(d.boxes, [[20, 20, 100, 60], [0, 0, 200, 50]], atol=1e-4)
    np.testing.assert_allclose(d.scores, [0.9, 0.4], atol=1e-6)
    # the [N, 5] pixel variant with a separate labels output
    boxes5 = np.array([[10, 10, 50, 50, 0.7], [0, 0, 0, 0, 0.0]], np.float32)
    order = detection_output.output_order([({"boxes"}, (2, 5)), ({"labels"}, (2,))])
    assert order == [0, 1]
    d5 = detection_output.decode([boxes5, np.array([4, 0])], spec, 0.5)
    assert d5.labels.tolist() == [4] and d5.boxes.tolist() == [[10, 10, 50, 50]]
