"""The wire format: the only module that knows how messages become ZeroMQ frames.

Every message is one multipart ZeroMQ message::

    frame 0   type tag, ASCII, e.g. b"zv.tile"   (also the PUB topic, for prefix filtering)
    frame 1   header: a msgpack map, always with "v" (protocol version)
    frame 2…  raw buffers (pixels, boxes), little-endian, exactly as sized in the header

msgpack rather than JSON for the header: it is typed (ints stay ints, floats stay floats),
compact, binary-safe and has a parser in every language; the pixels never go through it,
they travel as their own frame and are handed to numpy and OpenVINO without a copy.
Nothing here unpickles or evaluates anything: a frame is bytes until validated.

``decode`` raises ``ProtocolError`` for anything malformed, foreign or of another version,
and for any field outside its bounds: counts are non-negative ints (a float is refused),
floats are finite, ids and texts have a length limit, settings maps are plain JSON of
bounded depth. The receiving loops count and log it and carry on, so nothing downstream
(a cache key, a watcher, a JSON record) ever meets a NaN or a 500-deep list.

Paths come from the OS and need not be UTF-8: such a path (a str with lone surrogates in
Python) travels as a msgpack bin of its bytes and decodes back to the same str
(``os_text``). docs/protocol.md is the specification for other languages; keep the two
in step.
"""

from __future__ import annotations

import enum
import math
import os
import secrets
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from hashlib import blake2b
from operator import attrgetter
from typing import Any, ClassVar

import msgpack
import numpy as np

from zmqvision.boxes import Detections

VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_TILE_SIDE = 1 << 14
MAX_TILE_BYTES = 64 << 20  # decoded pixels of one tile (a JPEG frame may claim any shape)
# How a tile's pixels travel: raw bytes (zero-copy, for one host) or a JPEG (10-20x
# fewer bytes, for links between hosts; lossy, so detections may differ slightly).
TILE_ENCODINGS = ("raw", "jpeg")
# What the ventilator may send a worker (``--wire``): tiles in one of TILE_ENCODINGS, or
# "image": each image's file bytes once, cut by the worker (``ImageWork``).
WIRE_MODES = (*TILE_ENCODINGS, "image")
# An ImageWork's file frame at most (the worker's DEALER takes messages up to 64 MiB).
MAX_IMAGE_WORK_BYTES = 60 << 20
# Tiles one ImageWork may carry at most (a 100-megapixel image at 640² tiles has ~400).
MAX_IMAGE_WORK_TILES = 10_000
JPEG_QUALITY = 95
# Detections in one tile's result at most. Models give at most a few hundred after their
# own NMS; the bound keeps a hostile sender from making the sink's merge quadratic work
# over a pile of hundreds of thousands of boxes (16 MiB would otherwise carry 400k).
MAX_RESULT_BOXES = 10_000
# Boxes, scores and class ids travel as little-endian raw frames of these types.
BOX_DTYPE = np.dtype("<f8")
SCORE_DTYPE = np.dtype("<f4")
LABEL_DTYPE = np.dtype("<i4")
# A classifier's embedding (Result.embedding): little-endian float32, at most this many.
EMBEDDING_DTYPE = np.dtype("<f4")
MAX_EMBEDDING = 1 << 16
# What a tile may ask of its worker (Tile.task): classes per tile at most.
MAX_TOP_K = 1000
# A segmentation tile's score map (Result.scores): little-endian float32 [h, w, C], the
# valid part of the model's output for the tile. Bounded here in bytes, side and
# channels (u8 labels: C <= 256); the sink then checks h, w against the tile's box and C
# against the job's model. deeplabv3's is 257 x 257 x 21 x 4 = 5.5 MB.
SCORES_DTYPE = np.dtype("<f4")
MAX_SCORES_BYTES = 16 << 20
MAX_SCORES_CHANNELS = 256
# Stage 1 of a two-stage job (zmqvision.tasks.stage2): K points per box (a face's five
# landmarks, a plate's corners), [N, K, 2] (x, y) in image pixels, K at most this.
# Little-endian float64 like the boxes: the second stage crops from these points, and
# float64 keeps its crops bit-equal to the single-process reference's (80 bytes a face).
POINTS_DTYPE = np.dtype("<f8")
MAX_POINTS = 16
# Stage 2 read text (a plate or a line; Result.text): at most this many characters.
MAX_READ_CHARS = 1024


class ProtocolError(ValueError):
    """A message that is not ours, is malformed, or speaks another protocol version."""


class MsgType(enum.Enum):
    """Message types; the value is frame 0 (and the PUB topic)."""

    JOB_START = "zv.job"
    IMAGE = "zv.image"
    TILE = "zv.tile"
    RESULT = "zv.result"
    JOB_END = "zv.job_end"
    HEARTBEAT = "zv.heartbeat"
    PROGRESS = "zv.progress"
    JOB_DONE = "zv.job_done"
    SINK_STATUS = "zv.sink"
    WORKERS = "zv.workers"
    FAILURE = "zv.failure"
    READY = "zv.ready"
    BYE = "zv.bye"
    ACK = "zv.ack"
    RECORD = "zv.record"
    WITHDRAW = "zv.withdraw"
    LIVE = "zv.live"
    IMAGE_WORK = "zv.image_work"
    OBJECTS = "zv.objects"
    # Training a classifier head (zmqvision.train, docs/protocol.md "Training"):
    TRAIN_INVITE = "zv.train_invite"
    TRAIN_HELLO = "zv.train_hello"
    TRAIN_SHARD = "zv.train_shard"
    TRAIN_STEP = "zv.train_step"
    TRAIN_GRAD = "zv.train_grad"
    TRAIN_END = "zv.train_end"
    TRAIN_PROGRESS = "zv.train_progress"

    @property
    def tag(self) -> bytes:
        return self.value.encode("ascii")


_BY_TAG = {t.tag: t for t in MsgType}


# ---------------------------------------------------------------------------- identifiers


def new_job_id() -> str:
    """Random, so that two ventilators never collide on one sink."""
    return uuid.uuid4().hex[:16]


def new_job_secret() -> str:
    """A job's secret: 16 random bytes as hex. Only the ventilator and the sink know it
    (it travels in the job's control messages, ventilator → sink, and is never published),
    so nobody who can merely reach the sink and read its events can end, shorten, alter or
    stall the job (docs/reliability.md, threat model)."""
    return secrets.token_hex(16)


def image_id(content_hash: str, path: str, frame: int = 0) -> str:
    """Stable across runs: the same bytes at the same path get the same id; the same bytes
    under two names are two images (two records) that a cache can still share by hash.
    Frame ``k`` > 0 of a multi-frame file (``--frames all``) is an image of its own; frame
    0 keeps the file's id, so a job of first frames and one of every frame agree on it."""
    h = blake2b(digest_size=12)
    h.update(content_hash.encode())
    h.update(b"\0")
    h.update(os.path.abspath(path).encode("utf-8", "surrogateescape"))
    if frame:
        h.update(b"\0frame %d" % frame)  # a path has no NUL: no path can collide
    return h.hexdigest()


def failed_image_id(path: str, frame: int = 0) -> str:
    """An image that could not be read has no content hash; its path alone names it."""
    return image_id("unreadable", path, frame)


def frame_hash(content_hash: str, frame: int | None) -> str:
    """The result cache's name for one frame's pixels: the file's content hash for frame
    0 (a still image's key, and a multi-frame file's first frame, stay what they were),
    ``<hash>#<k>`` for frame ``k``. Ventilator lookups and sink saves both use it."""
    return f"{content_hash}#{frame}" if frame else content_hash


# ---------------------------------------------------------------------------- validation


# Bounds on what one header may hold, beyond its total size (MAX_HEADER_BYTES):
# - counts (tile indices, attempts, counters, sizes) are 0 … 2**53 − 1, exact in a double
#   and in JavaScript's Number, so a watcher in any language reads them unchanged;
# - names (ids, hosts, model refs, error types) are short and end up as keys of per-peer
#   tables, so they are bounded tightly;
# - text from the operating system (paths, error messages) may be long, and may not be
#   valid UTF-8: see ``_text``;
# - settings maps (model, tiling, merge, options) are plain JSON nested at most 4 deep
#   (``_plain``), so nothing downstream (a cache key, a JSON record) recurses without end.
MAX_COUNT = (1 << 53) - 1
MAX_CREDIT = 1_000_000
MAX_NAME_CHARS = 1024
MAX_TEXT_CHARS = 1 << 18  # one path (Linux allows 128 KiB per argument) and some prose
MAX_PLAIN_DEPTH = 4
MAX_SECRET_CHARS = 128


def _req(h: dict, key: str, types: type | tuple[type, ...], optional: bool = False) -> Any:
    if key not in h:
        if optional:
            return None
        raise ProtocolError(f"header lacks {key!r}")
    value = h[key]
    if value is None and optional:
        return None
    # bool is an int in Python; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ProtocolError(f"{key!r} must be {types}, got bool")
    if not isinstance(value, types):
        raise ProtocolError(f"{key!r} must be {types}, got {type(value).__name__}")
    return value


_NUM = (int, float)


def _int(h: dict, key: str) -> int:
    """An integer of any sign (``_req(h, key, int)``): a count checked where it is used."""
    value = h.get(key)
    return value if type(value) is int else _req(h, key, int)


def _count(h: dict, key: str, optional: bool = False, hi: int = MAX_COUNT) -> Any:
    """A non-negative integer (a float such as 3.0 is refused: the sender has a bug)."""
    value = h.get(key)
    if type(value) is int and 0 <= value <= hi:  # the usual case, at once (bool is no int here)
        return value
    if value is None and optional:
        return None
    value = _req(h, key, int, optional)
    if value is not None and not 0 <= value <= hi:
        raise ProtocolError(f"{key!r} is {value}, not in 0..{hi}")
    return value


def _finite(value: Any, key: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ProtocolError(f"{key!r} is not a finite number")
    return value


def _float(h: dict, key: str, optional: bool = False, lo: float | None = None,
           hi: float | None = None) -> Any:
    """A finite number (an int is accepted), within ``lo`` … ``hi`` when given."""
    value = h.get(key)
    if (type(value) is float and math.isfinite(value) and (lo is None or value >= lo)
            and (hi is None or value <= hi)):
        return value  # the usual case, at once
    if value is None and optional:
        return None
    value = _req(h, key, _NUM, optional)
    if value is None:
        return None
    value = _finite(value, key)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ProtocolError(f"{key!r} is {value}, not in {lo}..{hi}")
    return value


def _name(h: dict, key: str, optional: bool = False) -> Any:
    """An identifier (job, image, worker, sink, host, model ref, error type)."""
    value = h.get(key)
    if type(value) is str and len(value) <= MAX_NAME_CHARS:  # the usual case, at once
        return value
    if value is None and optional:
        return None
    value = _req(h, key, str, optional)
    if value is not None and len(value) > MAX_NAME_CHARS:
        raise ProtocolError(f"{key!r} is over {MAX_NAME_CHARS} characters")
    return value


def _secret(h: dict) -> str:
    """A job's secret (``new_job_secret``): required in every control message of a job,
    "" where a sender has none (then the job is only as safe as its job id)."""
    value = h.get("secret")
    if type(value) is str and len(value) <= MAX_SECRET_CHARS:
        return value
    value = _req(h, "secret", str)
    if len(value) > MAX_SECRET_CHARS:
        raise ProtocolError(f"'secret' is over {MAX_SECRET_CHARS} characters")
    return value


def job_proof(secret: str, job: str, images: int, failed: int) -> str:
    """``JobDone.proof``: a keyed hash of the job's totals under its secret. Published, it
    reveals nothing of the secret; it shows the ventilator that the sink which finished the
    job is the one it announced the job to (not a job of the same id that someone else
    started on a restarted sink)."""
    mac = blake2b(f"{job}\0{images}\0{failed}".encode(), key=secret.encode()[:64],
                  digest_size=16)
    return mac.hexdigest()


def _names(h: dict, key: str) -> tuple[str, ...]:
    """A list of identifiers (image ids of an ack or a withdrawal)."""
    values = h.get(key)
    if (type(values) is list and all(type(v) is str for v in values)
            and max(map(len, values), default=0) <= MAX_NAME_CHARS):
        return tuple(values)  # the usual case, at once
    values = _req(h, key, list)
    if not all(isinstance(v, str) and len(v) <= MAX_NAME_CHARS for v in values):
        raise ProtocolError(f"{key!r} must be a list of ids")
    return tuple(values)


def os_text(value: str) -> str | bytes:
    """How text from the operating system travels: as a msgpack str when it is valid
    Unicode, else (a file name whose bytes are not UTF-8, which Python holds as lone
    surrogates, PEP 383) as a msgpack bin of its bytes, so it arrives exactly."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no OS path gives (U+D800…U+DC7F): escaped
        return value.encode("utf-8", "backslashreplace").decode("ascii")


def _from_bin(value: bytes) -> str:
    """The inverse of ``os_text``: bytes that are not UTF-8 become U+DC80…U+DCFF, as
    ``os.fsdecode`` gives them on POSIX, so the name opens the same file again."""
    return bytes(value).decode("utf-8", "surrogateescape")


def _text(h: dict, key: str, optional: bool = False) -> Any:
    """Text that may come from the OS (a path, an error message): str, or bin holding
    bytes that need not be UTF-8 (``os_text``)."""
    value = h.get(key)
    if type(value) is str and len(value) <= MAX_TEXT_CHARS:  # the usual case, at once
        return value
    if value is None and optional:
        return None
    value = _req(h, key, (str, bytes), optional)
    if isinstance(value, bytes):
        value = _from_bin(value)
    if value is not None and len(value) > MAX_TEXT_CHARS:
        raise ProtocolError(f"{key!r} is over {MAX_TEXT_CHARS} characters")
    return value


def _for_wire(value: Any) -> Any:
    """A header with every string that msgpack cannot pack as UTF-8 made packable
    (``os_text``); only called when packing failed, so the usual message pays nothing."""
    if isinstance(value, str):
        return os_text(value)
    if isinstance(value, dict):  # keys are ours, never paths: escaped if need be
        return {(k.encode("utf-8", "backslashreplace").decode("utf-8")
                 if isinstance(k, str) else k): _for_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_for_wire(v) for v in value]
    return value


def _box(h: dict, key: str) -> tuple[float, float, float, float]:
    v = h.get(key)
    if type(v) is list and len(v) == 4:  # the usual case (four floats, in order), at once
        x0, y0, x1, y1 = v
        if (type(x0) is float and type(y0) is float and type(x1) is float
                and type(y1) is float and x0 <= x1 and y0 <= y1
                and math.isfinite(x0 + y0 + x1 + y1)):  # a sum is finite only if each is
            return x0, y0, x1, y1
    v = _req(h, key, list)
    if len(v) != 4 or not all(isinstance(x, _NUM) and not isinstance(x, bool) for x in v):
        raise ProtocolError(f"{key!r} must be 4 numbers")
    box = tuple(v)
    for x in box:
        _finite(x, key)
    if box[2] < box[0] or box[3] < box[1]:
        raise ProtocolError(f"{key!r} must be [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")
    return box  # type: ignore[return-value]


def _error(h: dict) -> dict | None:
    if h.get("error") is None:
        return None
    e = _req(h, "error", dict, optional=True)
    if e is None:
        return None
    return {"type": _name(e, "type"), "message": _text(e, "message")}


def _plain(value: Any, where: str, depth: int = 0, paths: bool = False) -> Any:
    """``value`` if it is plain JSON (str keys; str, int, finite float, bool, None, lists,
    maps; nested at most ``MAX_PLAIN_DEPTH`` deep): settings that end up in result records
    and cache keys must be writable as JSON whatever a sender put in them. With ``paths``
    (the model map, which names a user's model file), a bin is text from the OS
    (``_text``) and comes back as a str."""
    if depth > MAX_PLAIN_DEPTH:
        raise ProtocolError(f"{where}: nested too deep")
    if value is None or isinstance(value, str | bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_COUNT:
            raise ProtocolError(f"{where}: integer out of range")
        return value
    if isinstance(value, bytes) and paths:
        return _from_bin(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"{where}: non-finite number")
        return value
    if isinstance(value, list):
        return [_plain(item, where, depth + 1, paths) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"{where}: keys must be strings")
            out[key] = _plain(item, where, depth + 1, paths)
        return out
    raise ProtocolError(f"{where}: {type(value).__name__} is not a plain JSON value")


def _model(h: dict) -> dict:
    """The job's model description (``ModelSpec.describe()``): plain JSON, with the keys
    that the sink and the result cache read typed (``ref``, ``labels``, and when present
    ``name``, ``version``, ``sha256``, ``task``, ``family``, ``input_size``, the two
    thresholds and ``preprocess``)."""
    model = _plain(_req(h, "model", dict), "model", paths=True)
    _name(model, "ref")
    labels = _req(model, "labels", list)
    if not all(isinstance(x, str) for x in labels):
        raise ProtocolError("model labels must be strings")
    for key in ("name", "version", "sha256", "task", "family"):
        _name(model, key, optional=True)
    size = _req(model, "input_size", list, optional=True)
    if size is not None and (len(size) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= MAX_TILE_SIDE
            for x in size)):
        raise ProtocolError("model input_size must be [width, height], 1..16384")
    _float(model, "score_threshold", optional=True, lo=0.0, hi=1.0)
    _float(model, "nms_threshold", optional=True, lo=0.0, hi=1.0)
    _req(model, "preprocess", dict, optional=True)
    return model


def _options(h: dict) -> dict:
    """JobStart ``options``: plain JSON; ``score_threshold`` null or 0…1, ``records`` one
    of RECORD_DELIVERY when present."""
    options = _plain(_req(h, "options", dict, optional=True) or {}, "options")
    _float(options, "score_threshold", optional=True, lo=0.0, hi=1.0)
    records = _req(options, "records", str, optional=True)
    if records is not None and records not in RECORD_DELIVERY:
        raise ProtocolError(f"options.records must be one of {RECORD_DELIVERY}")
    return options


def _buffer(frame: Any) -> memoryview:
    """A read-only view of a frame, whether it came as bytes or as a zero-copy zmq.Frame."""
    buf = getattr(frame, "buffer", None)
    return memoryview(frame) if buf is None else buf


def detection_arrays(d: Detections) -> list[np.ndarray]:
    """Boxes, scores and class ids as three little-endian arrays: the frames of a Result
    and of a cached ImageInfo, and the arrays of a result-cache entry."""
    return [
        np.ascontiguousarray(d.boxes, BOX_DTYPE),
        np.ascontiguousarray(d.scores, SCORE_DTYPE),
        np.ascontiguousarray(d.labels, LABEL_DTYPE),
    ]


def points_from_buffer(n: int, k: int, buf: Any) -> np.ndarray:
    """``n`` boxes' ``k`` points each, float64 ``[n, k, 2]``: ProtocolError unless
    1 <= k <= MAX_POINTS, the frame has exactly ``n * k * 8`` bytes and every number is
    finite (points may lie outside the image: a face cut by the image's border)."""
    if not 1 <= k <= MAX_POINTS:
        raise ProtocolError(f"points per box {k} not in 1..{MAX_POINTS}")
    view = _buffer(buf)
    if view.nbytes != n * k * 2 * POINTS_DTYPE.itemsize:
        raise ProtocolError(f"points frame has {view.nbytes} bytes, n={n}, k={k}")
    pts = np.frombuffer(view, POINTS_DTYPE).reshape(n, k, 2).astype(np.float64)
    if not _all_finite(pts):
        raise ProtocolError("non-finite numbers in the points")
    return pts


def detections_from_buffers(n: int, bufs: Sequence) -> Detections:
    """``n`` detections from three buffers (``detection_arrays``'s layout), checked for
    count, size and finite numbers; ProtocolError otherwise."""
    if not 0 <= n <= MAX_RESULT_BOXES:
        raise ProtocolError(f"detection count {n} not in 0..{MAX_RESULT_BOXES}")
    if len(bufs) != 3:
        raise ProtocolError(f"detections need 3 frames (boxes, scores, labels), got {len(bufs)}")
    views = [_buffer(b) for b in bufs]
    if (views[0].nbytes != n * _BOX_BYTES or views[1].nbytes != n * _SCORE_BYTES
            or views[2].nbytes != n * _LABEL_BYTES):
        raise ProtocolError(f"detection frames sized {[v.nbytes for v in views]}, n={n}")
    boxes = np.frombuffer(views[0], BOX_DTYPE).reshape(n, 4).astype(np.float64)
    dets = Detections(
        boxes,
        np.frombuffer(views[1], SCORE_DTYPE).astype(np.float32),
        np.frombuffer(views[2], LABEL_DTYPE).astype(np.int32),
    )
    if n and (not _all_finite(boxes) or not _all_finite(dets.scores)):
        raise ProtocolError("non-finite numbers in detections")
    return dets


_BOX_BYTES = 4 * BOX_DTYPE.itemsize  # one detection's share of each frame
_SCORE_BYTES = SCORE_DTYPE.itemsize
_LABEL_BYTES = LABEL_DTYPE.itemsize
_ALL = np.logical_and.reduce


def _all_finite(a: np.ndarray) -> bool:
    """``np.isfinite(a).all()`` without ndarray.all's Python wrapper (a fifth of the
    check on a few detections)."""
    return bool(_ALL(np.isfinite(a), None))


def _fields_header(msg: Any) -> dict:
    """The header of a message whose header is its fields (what ``dataclasses.asdict``
    gives), without asdict's deep copy, which cost ten times the packing: the header is
    packed at once and never kept. ``encode`` falls back to asdict's conversion when a
    field holds a dataclass (which msgpack refuses and asdict made a map)."""
    names, values = _FIELD_ACCESS[type(msg)]
    return dict(zip(names, values(msg), strict=True))


def _as_plain(value: Any) -> Any:
    """``value`` with every dataclass instance in it made a map, as asdict does."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list | tuple):
        return type(value)(_as_plain(v) for v in value)  # type: ignore[call-arg]
    if isinstance(value, dict):
        return type(value)((k, _as_plain(v)) for k, v in value.items())
    return value


def _built(cls: type, **values: Any) -> Any:
    """``cls(**values)`` for a frozen dataclass without ``__post_init__``, given every
    field in the order of its fields, without running its ``__init__``: that sets each
    field through ``object.__setattr__`` (frozen), over a microsecond for the 13 to 15
    fields of the per-tile messages; the instance is the same (tests compare them)."""
    msg = _new_object(cls)
    msg.__dict__.update(values)
    return msg


_new_object = object.__new__


# ---------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class JobStart:
    """Ventilator → sink, before any image of the job: what to expect and how to merge."""

    TYPE: ClassVar[MsgType] = MsgType.JOB_START
    job: str
    model: dict  # ModelSpec.describe(): name, version, ref, labels, input_size, …
    tiling: dict  # tile_size, overlap, full_pass
    merge: dict  # method, metric, threshold, class_agnostic
    created: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    options: dict = field(default_factory=dict)  # free-form extras (score threshold, …)
    # Shared by the ventilator and the sink only: every later control message of the job
    # must carry it (new_job_secret). Never published, never in a record or cache key.
    secret: str = field(default="", repr=False)

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> JobStart:
        return cls(
            job=_name(h, "job"),
            model=_model(h),
            tiling=_plain(_req(h, "tiling", dict), "tiling"),
            merge=_plain(_req(h, "merge", dict), "merge"),
            created=_float(h, "created"),
            host=_name(h, "host"),
            options=_options(h),
            secret=_secret(h),
        )


@dataclass(frozen=True, eq=False)
class Cached:
    """A result the ventilator found in the result cache: the merged detections of the
    image (or its bytes-intrinsic error) under the job's settings, with the tile count of
    the run that produced them."""

    tiles: int
    detections: Detections
    created: float = 0.0
    # A classification ``--embed`` job's: float32 [tiles, D], one row per tile in order.
    embeddings: np.ndarray | None = None
    # A two-stage job's: each object's points and stage-2 answer (``detections`` are then
    # every object stage 2 answered, in the order the sink merged them).
    stage2: Stage2Cached | None = None
    # A segmentation job's: the mask file's bytes and the pixels of each class
    # (``detections`` are then empty).
    segment: SegmentCached | None = None


# A cached mask travels as one frame of a zv.image (the sink's frames may be up to
# MAX_SCORES_BYTES); a mask file bigger than this is not kept in the result cache.
MAX_CACHED_MASK_BYTES = 8 << 20
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, eq=False)
class SegmentCached:
    """A segmentation job's image as the result cache keeps it: its mask exactly as the
    sink wrote it (``png``: the 8-bit palette PNG's bytes, at most MAX_CACHED_MASK_BYTES)
    and the pixels of each class id (``counts[k]``, summing to the image's area; trailing
    zeros left out). A hit writes the same bytes to the same place and makes the record's
    ``segmentation`` from the counts (and COCO RLE from the PNG's rows when asked).

    Travels as ``cached.segment`` in a ``zv.image`` header (``header()``: ``png`` its byte
    count, ``counts``) with the PNG as ONE frame after the detections' (``frame()``; a
    zv.image keeps to ``sockets.MAX_FRAMES``); the result cache stores the same header
    with that frame's bytes."""

    png: bytes | memoryview
    counts: tuple[int, ...]

    def header(self) -> dict:
        return {"png": len(self.png), "counts": list(self.counts)}

    def frame(self) -> bytes | memoryview:
        return self.png

    @property
    def size(self) -> tuple[int, int]:
        """The mask's (width, height), from its IHDR (checked by ``parse``)."""
        v = memoryview(self.png)
        return (int.from_bytes(v[16:20], "big"), int.from_bytes(v[20:24], "big"))

    @classmethod
    def parse(cls, h: dict, bufs: Sequence, width: int, height: int) -> SegmentCached:
        """A cached mask of a ``width`` × ``height`` image from its header and frame;
        ProtocolError for any defect: not one frame, a byte count that is not the frame's
        or over MAX_CACHED_MASK_BYTES, not an 8-bit palette PNG of that size, counts that
        are not up to MAX_SCORES_CHANNELS non-negative integers summing to the area."""
        nbytes = _count(h, "png", hi=MAX_CACHED_MASK_BYTES)
        counts = _req(h, "counts", list)
        if len(bufs) != 1:
            raise ProtocolError(f"a cached mask needs 1 frame, got {len(bufs)}")
        view = _buffer(bufs[0])
        if view.nbytes != nbytes:
            raise ProtocolError(f"cached mask frame has {view.nbytes} bytes, header {nbytes}")
        if (nbytes < 33 or view[:8] != _PNG_SIGNATURE or view[8:16] != b"\0\0\0\rIHDR"
                or view[24:26] != b"\x08\x03"):
            raise ProtocolError("a cached mask is not an 8-bit palette PNG")
        if len(counts) > MAX_SCORES_CHANNELS or not all(
                type(c) is int and 0 <= c <= MAX_COUNT for c in counts):
            raise ProtocolError(f"cached mask counts must be at most {MAX_SCORES_CHANNELS} "
                                "non-negative integers")
        # bytes stay bytes (an entry's); a zmq frame is kept as its view, not copied
        mask = cls(png=bufs[0] if isinstance(bufs[0], bytes) else view, counts=tuple(counts))
        if mask.size != (width, height) or sum(counts) != width * height:
            raise ProtocolError(f"a cached mask of {mask.size} with {sum(counts)} pixels "
                                f"for a {width}x{height} image")
        return mask


@dataclass(frozen=True, eq=False)
class Stage2Cached:
    """A two-stage job's stage 2 as the result cache keeps it, per object of the cached
    detections: its points (a face's landmarks, a plate's corners, a line's rectangle),
    and its answer — a face's unit embedding (float32 ``[n, D]``) or a reader's text and
    text score. Never an identity: the sink matches the embeddings against the gallery
    as it is at the time of the record (``tasks.stage2.Matcher``).

    Travels as ``cached.stage2`` in a ``zv.image`` header (``header()``: ``points`` K,
    ``embed`` [n, D] or ``texts`` and ``text_scores``) with its numbers as ONE frame after
    the detections' (``frame()``: the points, float64 ``[n, K, 2]``, then the embeddings,
    float32 ``[n, D]``; one frame keeps the message within ``sockets.MAX_FRAMES``); the
    result cache stores the same header with that frame's bytes."""

    points: np.ndarray  # float64 [n, K, 2]
    embeddings: np.ndarray | None = None  # identify's (None for a reader, or no object)
    texts: tuple[str, ...] | None = None  # a reader's, one per object (None: identify)
    text_scores: tuple[float, ...] | None = None  # with texts: each 0..1

    def header(self) -> dict:
        h: dict = {"points": int(self.points.shape[1])}
        if self.embeddings is not None:
            h["embed"] = list(self.embeddings.shape)
        if self.texts is not None:
            h["texts"] = list(self.texts)
            h["text_scores"] = [float(s) for s in self.text_scores or ()]
        return h

    def frame(self) -> bytes:
        """The points, then the embeddings (a few KB: the copy that joins them is what
        keeping to one frame costs)."""
        points = np.ascontiguousarray(self.points, POINTS_DTYPE).tobytes()
        if self.embeddings is None:
            return points
        return points + np.ascontiguousarray(self.embeddings, EMBEDDING_DTYPE).tobytes()

    @classmethod
    def parse(cls, h: dict, n: int, bufs: Sequence) -> Stage2Cached:
        """The stage 2 of ``n`` cached objects from its header and frame; ProtocolError
        for any defect: a count that is not ``n``, an embedding and texts both or (with
        objects) neither, text over MAX_READ_CHARS, a score outside 0..1, sizes,
        non-finite numbers."""
        k = _count(h, "points", hi=MAX_POINTS)
        shape = _req(h, "embed", list, optional=True)
        texts = _req(h, "texts", list, optional=True)
        if shape is not None and texts is not None:
            raise ProtocolError("cached stage 2 has embeddings and texts")
        if len(bufs) != 1:
            raise ProtocolError(f"cached stage 2 needs 1 frame, got {len(bufs)}")
        view = _buffer(bufs[0])
        size = n * k * 2 * POINTS_DTYPE.itemsize
        points = points_from_buffer(n, k, view if shape is None else view[:size])
        embeddings = scores = None
        if shape is not None:
            embeddings = _object_embeddings(shape, n, view[size:])
        elif texts is None and n:
            raise ProtocolError("cached stage 2 of objects without their answers")
        if texts is not None:
            raw = _req(h, "text_scores", list)
            if len(texts) != n or len(raw) != n:
                raise ProtocolError(f"cached stage 2 has {len(texts)} texts and {len(raw)} "
                                    f"scores for {n} objects")
            if not all(type(t) is str and len(t) <= MAX_READ_CHARS for t in texts):
                raise ProtocolError(f"cached texts must be strings of at most "
                                    f"{MAX_READ_CHARS} characters")
            if not all(type(s) in (int, float) and 0.0 <= s <= 1.0 for s in raw):
                raise ProtocolError("cached text scores must be numbers in 0..1")
            texts, scores = tuple(texts), tuple(float(s) for s in raw)
        return cls(points=points, embeddings=embeddings, texts=texts, text_scores=scores)

    @property
    def answer(self) -> str:
        """``"text"`` (a reader's) or ``"embedding"`` (identify's)."""
        return "embedding" if self.texts is None else "text"

    def answers(self) -> dict[int, tuple]:
        """Object i's answer as the sink keeps a worker's: (embedding, text, text score)."""
        n = len(self.points)
        if self.texts is not None:
            return {i: (None, self.texts[i], self.text_scores[i]) for i in range(n)}
        return {i: (self.embeddings[i], None, None) for i in range(n)}


def _object_embeddings(shape: list, n: int, buf: Any) -> np.ndarray:
    """Cached stage-2 embeddings: float32 ``[n, D]`` from one frame, all finite."""
    if (len(shape) != 2 or not all(type(v) is int for v in shape) or shape[0] != n
            or not 1 <= shape[1] <= MAX_EMBEDDING):
        raise ProtocolError(f"cached stage-2 embeddings shaped {shape}, for {n} objects")
    view = _buffer(buf)
    if view.nbytes != n * shape[1] * EMBEDDING_DTYPE.itemsize:
        raise ProtocolError(f"cached stage-2 embeddings frame has {view.nbytes} bytes, "
                            f"shape {shape}")
    vecs = np.frombuffer(view, EMBEDDING_DTYPE).astype(np.float32).reshape(n, shape[1])
    if not _all_finite(vecs):
        raise ProtocolError("non-finite numbers in the cached stage-2 embeddings")
    return vecs


@dataclass(frozen=True)
class ImageInfo:
    """Ventilator → sink: one input image, announced before its tiles. An image that could
    not be read is announced with ``error`` set and zero tiles: it still gets its record.
    An image whose result was in the cache is announced with ``cached`` set and zero tiles:
    its record is written from it at once, and no worker ever sees it."""

    TYPE: ClassVar[MsgType] = MsgType.IMAGE
    job: str
    image: str
    path: str
    seq: int  # 0-based position of the image in the job's input stream
    width: int = 0
    height: int = 0
    tiles: int = 0
    hash: str | None = None
    abspath: str | None = None
    error: dict | None = None
    cached: Cached | None = None
    secret: str = field(default="", repr=False)  # the job's (JobStart.secret)
    # A frame of a multi-frame file (animated GIF, multi-page TIFF): its 0-based index
    # and the file's frame count; both None for a still image (and left out of the header).
    frame: int | None = None
    frames: int | None = None
    # A video frame: its presentation time in seconds (its ``frame`` is then the index in
    # the video; a live stream's frames have no ``frames`` count).
    time: float | None = None

    def header(self) -> dict:
        h = {"job": self.job, "image": self.image, "path": self.path, "seq": self.seq,
             "width": self.width, "height": self.height, "tiles": self.tiles,
             "hash": self.hash, "abspath": self.abspath, "error": self.error,
             "secret": self.secret}
        if self.frame is not None:
            h["frame"] = self.frame
        if self.frames is not None:
            h["frames"] = self.frames
        if self.time is not None:
            h["time"] = self.time
        if self.cached is not None:
            h["cached"] = {"tiles": self.cached.tiles, "n": len(self.cached.detections),
                           "created": self.cached.created}
            if self.cached.embeddings is not None:
                h["cached"]["embed"] = list(self.cached.embeddings.shape)
            if self.cached.stage2 is not None:
                h["cached"]["stage2"] = self.cached.stage2.header()
            if self.cached.segment is not None:
                h["cached"]["segment"] = self.cached.segment.header()
        return h

    def buffers(self) -> list:
        if self.cached is None:
            return []
        arrays = detection_arrays(self.cached.detections)
        if self.cached.embeddings is not None:
            arrays.append(np.ascontiguousarray(self.cached.embeddings, EMBEDDING_DTYPE))
        if self.cached.stage2 is not None:
            arrays.append(self.cached.stage2.frame())
        if self.cached.segment is not None:
            arrays.append(self.cached.segment.frame())
        return arrays

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> ImageInfo:
        cached = None
        c = None if h.get("cached") is None else _req(h, "cached", dict)
        if c is not None:
            tiles = _count(c, "tiles")
            shape = _req(c, "embed", list, optional=True)
            s2 = None if c.get("stage2") is None else _req(c, "stage2", dict)
            seg = None if c.get("segment") is None else _req(c, "segment", dict)
            # The detections' 3 frames, then one for each part there, in this order; the
            # last takes what is left (each parser refuses frames too many or too few).
            names = [n for n, p in zip(("embed", "stage2", "segment"), (shape, s2, seg),
                                       strict=True) if p is not None]
            at = {name: bufs[3 + i:] if i == len(names) - 1 else bufs[3 + i:4 + i]
                  for i, name in enumerate(names)}
            dets = detections_from_buffers(_int(c, "n"), bufs[:3] if names else bufs)
            cached = Cached(tiles=tiles, detections=dets,
                            created=_float(c, "created", optional=True) or 0.0,
                            embeddings=None if shape is None else embeddings_from_buffer(
                                shape, tiles, at["embed"]),
                            stage2=None if s2 is None
                            else Stage2Cached.parse(s2, len(dets), at["stage2"]),
                            segment=None if seg is None else SegmentCached.parse(
                                seg, at["segment"], _count(h, "width"), _count(h, "height")))
        msg = _built(
            cls,
            job=_name(h, "job"),
            image=_name(h, "image"),
            path=_text(h, "path"),
            seq=_count(h, "seq"),
            width=_count(h, "width"),
            height=_count(h, "height"),
            tiles=_count(h, "tiles"),
            hash=_name(h, "hash", optional=True),
            abspath=_text(h, "abspath", optional=True),
            error=_error(h),
            cached=cached,
            secret=_secret(h),
            frame=_count(h, "frame", optional=True),
            frames=_count(h, "frames", optional=True),
            time=_float(h, "time", optional=True, lo=0.0),
        )
        if (msg.frames is not None and (msg.frame is None or msg.frame >= msg.frames)) or (
                msg.time is not None and msg.frame is None):
            raise ProtocolError(f"frame {msg.frame} of {msg.frames}: not a frame of the file")
        if cached is not None:
            if msg.tiles != 0:
                raise ProtocolError("a cached image has no tiles to send")
            if msg.error is not None and len(cached.detections):
                raise ProtocolError("a cached error has no detections")
            if cached.segment is not None and (len(cached.detections) or msg.error is not None):
                raise ProtocolError("a cached mask comes without detections or an error")
        elif msg.error is None and msg.tiles == 0:
            raise ProtocolError("an image without an error must have tiles")
        return msg


@dataclass(frozen=True, eq=False)
class Tile:
    """Ventilator → worker: one tile's pixels, already at the model's input size.

    ``box`` is the tile's region in image pixels and ``scale`` the model-input pixels per
    image pixel (1.0 when the tile is the input size), so a worker can put its detections
    into image coordinates without knowing anything else about the image.
    """

    TYPE: ClassVar[MsgType] = MsgType.TILE
    job: str
    image: str
    index: int
    box: tuple[float, float, float, float]
    scale: float
    model: str  # ModelSpec.ref the pixels were cut for
    pixels: np.ndarray  # uint8 [H, W, 3], RGB
    attempt: int = 0
    min_score: float | None = None  # the job's score threshold; None: the worker's default
    encoding: str = "raw"  # how the pixels travel: one of TILE_ENCODINGS
    frame: Any = None  # the received frame, kept alive while pixels view it
    # What the worker returns beyond its model's default (zmqvision.tasks): for a
    # classifier {"top_k": k, "embed": bool}; None (detection) leaves it out of the header.
    task: dict | None = None
    # The JPEG of ``pixels``, already made (the ventilator encodes tiles on a thread pool
    # before it sends them in order); None: ``buffers`` encodes it.
    encoded: bytes | None = None

    def header(self) -> dict:
        return {
            "job": self.job,
            "image": self.image,
            "index": self.index,
            "box": list(self.box),
            "scale": self.scale,
            "model": self.model,
            "attempt": self.attempt,
            "min_score": self.min_score,
            "shape": list(self.pixels.shape),
            "dtype": "uint8",
            "encoding": self.encoding,
            **({} if self.task is None else {"task": self.task}),
        }

    def buffers(self) -> list:
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3 or self.pixels.shape[2] != 3:
            raise ValueError("tile pixels must be uint8 [H, W, 3]")
        if self.encoding == "jpeg":
            return [self.encoded if self.encoded is not None else encode_jpeg(self.pixels)]
        if self.encoding != "raw":
            raise ValueError(f"unknown tile encoding {self.encoding!r}")
        return [np.ascontiguousarray(self.pixels)]

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Tile:
        shape = _tile_shape(h)
        if h.get("dtype") != "uint8" and _req(h, "dtype", str) != "uint8":
            raise ProtocolError("tile dtype must be uint8")
        if len(bufs) != 1:
            raise ProtocolError(f"tile needs 1 pixel frame, got {len(bufs)}")
        encoding = _name(h, "encoding", optional=True) or "raw"
        buf = _buffer(bufs[0])
        if encoding == "raw":
            if buf.nbytes != shape[0] * shape[1] * 3:
                raise ProtocolError(f"pixel frame has {buf.nbytes} bytes, shape says {shape}")
            pixels = np.frombuffer(buf, np.uint8).reshape(shape)
        elif encoding == "jpeg":
            pixels = _decode_jpeg(buf, shape)
        else:
            raise ProtocolError(f"unknown tile encoding {encoding!r}")
        scale = _float(h, "scale")
        if not scale > 0:
            raise ProtocolError("tile scale must be positive")
        return _built(
            cls,
            job=_name(h, "job"),
            image=_name(h, "image"),
            index=_count(h, "index"),
            box=_box(h, "box"),
            scale=scale,
            model=_name(h, "model"),
            pixels=pixels,
            attempt=_count(h, "attempt"),
            min_score=_float(h, "min_score", optional=True, lo=0.0, hi=1.0),
            encoding=encoding,
            frame=bufs[0],
            task=_tile_task(h),
            encoded=None,
        )


def _tile_shape(h: dict) -> list[int]:
    """``Tile.shape``: [height, width, 3], sides 1..MAX_TILE_SIDE."""
    shape = h.get("shape")
    if type(shape) is list and len(shape) == 3:  # the usual case, at once
        height, width, channels = shape
        if (type(height) is int and type(width) is int and type(channels) is int
                and channels == 3 and 1 <= height <= MAX_TILE_SIDE
                and 1 <= width <= MAX_TILE_SIDE):
            return shape
    shape = _req(h, "shape", list)
    if (
        len(shape) != 3
        or shape[2] != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        or not all(1 <= s <= MAX_TILE_SIDE for s in shape[:2])
    ):
        raise ProtocolError(f"bad tile shape {shape!r}")
    return shape


def _tile_task(h: dict) -> dict | None:
    """``Tile.task``: absent, or a map of what the tile asks beyond its model's default:
    a classifier's ``{"top_k": 1..MAX_TOP_K, "embed": bool}``; a two-stage job's stage-1
    tile ``{"points": true}`` (return each box's points: a face's landmarks); a stage-2
    tile ``{"stage": 2}`` (its pixels are one object's crop for the job's second model)."""
    if h.get("task") is None:
        return None
    t = _req(h, "task", dict)
    out: dict = {}
    if "top_k" in t:
        top_k = _count(t, "top_k", hi=MAX_TOP_K)
        if top_k < 1:
            raise ProtocolError("tile task top_k must be at least 1")
        out.update(top_k=top_k, embed=bool(_req(t, "embed", bool, optional=True)))
    if _req(t, "points", bool, optional=True):
        out["points"] = True
    stage = _count(t, "stage", optional=True, hi=2)
    if stage is not None:
        if stage != 2:
            raise ProtocolError("tile task stage must be 2 (stage 1 tiles say nothing)")
        out["stage"] = 2
    if not out:
        raise ProtocolError("tile task lacks 'top_k'")
    return out


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """A tile's JPEG as it travels (quality JPEG_QUALITY, 4:4:4); Pillow releases the GIL."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(
        out, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return out.getvalue()


def _decode_jpeg(buf: memoryview, shape: list[int]) -> np.ndarray:
    """Pixels of a JPEG tile, which must be exactly ``shape``: checked from the header
    before any decoding, so a small frame cannot make a worker allocate gigabytes."""
    import io

    from PIL import Image

    if shape[0] * shape[1] * 3 > MAX_TILE_BYTES:
        raise ProtocolError(f"tile shape {shape} is over {MAX_TILE_BYTES} bytes")
    try:
        with Image.open(io.BytesIO(buf)) as im:
            if im.format != "JPEG" or im.mode != "RGB":
                raise ProtocolError(f"tile is not an RGB JPEG ({im.format} {im.mode})")
            if im.size != (shape[1], shape[0]):
                raise ProtocolError(f"JPEG tile is {im.size[0]}x{im.size[1]}, shape says "
                                    f"{shape[1]}x{shape[0]}")
            im.load()
            return np.asarray(im)
    except ProtocolError:
        raise
    except Exception as exc:  # truncated or corrupt data: Pillow raises many types
        raise ProtocolError(f"undecodable JPEG tile: {exc}") from None


@dataclass(frozen=True, eq=False)
class ImageWork:
    """Ventilator → worker (``--wire image``): a whole image's file bytes, as they are on
    disk, and the plan of its tiles; the worker decodes, cuts and infers every tile and
    answers each with a ``Result`` exactly as for a ``Tile`` (so the sink is unchanged).

    ``boxes[i]`` is tile ``i``'s box in image pixels (``full[i]``: the downscaled pass over
    the whole image). ``width``/``height`` are the image's displayed size the plan was made
    for (a decode of another size is every tile's error); ``max_pixels`` the job's decode
    bound, and ``draft`` the JPEG reduction (1, 2, 4 or 8) the ventilator would have used.
    Its weight against the worker's credit is ``len(boxes)`` tiles."""

    TYPE: ClassVar[MsgType] = MsgType.IMAGE_WORK
    job: str
    image: str
    model: str
    width: int
    height: int
    boxes: tuple[tuple[int, int, int, int], ...]
    full: tuple[bool, ...]
    data: Any  # bytes or a received frame (buffer protocol): the file's bytes
    attempt: int = 0
    min_score: float | None = None
    max_pixels: int = 100_000_000
    draft: int = 1
    task: dict | None = None

    def header(self) -> dict:
        return {
            "job": self.job, "image": self.image, "model": self.model,
            "width": self.width, "height": self.height,
            "boxes": [list(b) for b in self.boxes], "full": list(self.full),
            "attempt": self.attempt, "min_score": self.min_score,
            "max_pixels": self.max_pixels, "draft": self.draft,
            **({} if self.task is None else {"task": self.task}),
        }

    def buffers(self) -> list:
        return [self.data]

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> ImageWork:
        if len(bufs) != 1:
            raise ProtocolError(f"image work needs 1 file frame, got {len(bufs)}")
        data = _buffer(bufs[0])
        if not 0 < data.nbytes <= MAX_IMAGE_WORK_BYTES:
            raise ProtocolError(f"image file frame of {data.nbytes} bytes")
        width = _count(h, "width", hi=MAX_COUNT)
        height = _count(h, "height", hi=MAX_COUNT)
        boxes_raw = _req(h, "boxes", list)
        full_raw = _req(h, "full", list)
        if not 1 <= len(boxes_raw) <= MAX_IMAGE_WORK_TILES or len(full_raw) != len(boxes_raw):
            raise ProtocolError(f"image work with {len(boxes_raw)} boxes, "
                                f"{len(full_raw)} full flags")
        boxes = []
        for b in boxes_raw:
            if (not isinstance(b, list) or len(b) != 4
                    or not all(type(v) is int for v in b)
                    or not (0 <= b[0] < b[2] <= width and 0 <= b[1] < b[3] <= height)):
                raise ProtocolError(f"bad tile box {b!r} for {width}x{height}")
            boxes.append(tuple(b))
        if not all(type(f) is bool for f in full_raw):
            raise ProtocolError("full flags must be booleans")
        draft = _count(h, "draft")
        if draft not in (1, 2, 4, 8):
            raise ProtocolError(f"draft {draft} is not 1, 2, 4 or 8")
        return cls(
            job=_name(h, "job"), image=_name(h, "image"), model=_name(h, "model"),
            width=width, height=height, boxes=tuple(boxes), full=tuple(full_raw),
            data=bufs[0], attempt=_count(h, "attempt"),
            min_score=_float(h, "min_score", optional=True, lo=0.0, hi=1.0),
            max_pixels=_count(h, "max_pixels"), draft=draft, task=_tile_task(h),
        )


@dataclass(frozen=True, eq=False)
class Result:
    """Worker → sink: one tile's detections, already in image coordinates.

    A classifier's tile answers with its top-k classes as rows (box: the tile's region,
    score: the probability, label: the class id) and, when the tile asked, its embedding:
    ``embedding`` in the header is its length and the vector is a fourth frame
    (little-endian float32). A detection result has no such key and three frames.

    A segmentation tile answers with no rows and its score map: ``scores`` in the header
    is its shape ``[h, w, C]`` and the map is a fourth frame (little-endian float32,
    row-major, exactly ``h * w * C * 4`` bytes, every number finite).

    A two-stage job's stage-1 tile answers with its rows' points too (``detections.
    landmarks``): ``points`` in the header is K and the fourth frame is float64
    ``[n, K, 2]`` (``points_from_buffer``). A stage-2 tile (index >= the image's stage-1
    tile count) answers with no rows and a face's embedding, or a read's ``text`` (UTF-8,
    at most MAX_READ_CHARS) and ``text_score`` (0..1) in the header. A result has at most
    one of embedding, scores and points."""

    TYPE: ClassVar[MsgType] = MsgType.RESULT
    job: str
    image: str
    index: int
    worker: str
    model: str
    detections: Detections
    error: dict | None = None
    attempt: int = 0
    infer_ms: float = 0.0
    embedding: np.ndarray | None = None  # float32 [d]: a classifier's, when asked for
    scores: np.ndarray | None = None  # float32 [h, w, C]: a segmenter's valid score map
    text: str | None = None  # a stage-2 reader's text (plates, text lines)
    text_score: float | None = None  # its confidence, 0..1

    def header(self) -> dict:
        h = {
            "job": self.job,
            "image": self.image,
            "index": self.index,
            "worker": self.worker,
            "model": self.model,
            "n": len(self.detections),
            "error": self.error,
            "attempt": self.attempt,
            "infer_ms": self.infer_ms,
        }
        if self.embedding is not None:
            h["embedding"] = int(self.embedding.size)
        if self.scores is not None:
            h["scores"] = [int(v) for v in self.scores.shape]
        if self.detections.landmarks is not None:
            h["points"] = int(self.detections.landmarks.shape[1])
        if self.text is not None:
            h["text"] = self.text
            h["text_score"] = float(self.text_score or 0.0)
        return h

    def buffers(self) -> list:
        arrays = detection_arrays(self.detections)
        if self.detections.landmarks is not None:
            arrays.append(np.ascontiguousarray(self.detections.landmarks, POINTS_DTYPE))
        if self.embedding is not None:
            arrays.append(np.ascontiguousarray(self.embedding, EMBEDDING_DTYPE).reshape(-1))
        if self.scores is not None:  # sent as it is when already little-endian f32 and C-order
            arrays.append(np.ascontiguousarray(self.scores, SCORES_DTYPE))
        return arrays

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Result:
        dim = _count(h, "embedding", optional=True, hi=MAX_EMBEDDING)
        shape = None if h.get("scores") is None else _req(h, "scores", list)
        k = _count(h, "points", optional=True, hi=MAX_POINTS)
        embedding = scores = points = None
        if (dim is not None) + (shape is not None) + (k is not None) > 1:
            raise ProtocolError("a result has at most one of embedding, scores and points")
        if dim is not None or shape is not None or k is not None:
            if len(bufs) != 4:
                what = ("an embedding" if dim is not None else "scores" if shape is not None
                        else "points")
                raise ProtocolError(f"a result with {what} needs 4 frames, got {len(bufs)}")
            extra, bufs = bufs[3], bufs[:3]
            if dim is not None:
                embedding = embedding_from_buffer(dim, extra)
            elif shape is not None:
                scores = scores_from_buffer(shape, extra)
            else:
                points = points_from_buffer(_int(h, "n"), k, extra)
        dets = detections_from_buffers(_int(h, "n"), bufs)
        if points is not None:
            dets = Detections(dets.boxes, dets.scores, dets.labels, points)
        text = None if h.get("text") is None else _req(h, "text", str)
        text_score = None
        if text is not None:
            if len(text) > MAX_READ_CHARS:
                raise ProtocolError(f"read text over {MAX_READ_CHARS} characters")
            text_score = _float(h, "text_score", lo=0.0, hi=1.0)
        return _built(
            cls,
            job=_name(h, "job"),
            image=_name(h, "image"),
            index=_count(h, "index"),
            worker=_name(h, "worker"),
            model=_name(h, "model"),
            detections=dets,
            error=_error(h),
            attempt=_count(h, "attempt"),
            infer_ms=_float(h, "infer_ms", lo=0.0),
            embedding=embedding,
            scores=scores,
            text=text,
            text_score=text_score,
        )


def scores_from_buffer(shape: Any, buf: Any) -> np.ndarray:
    """A segmentation score map ``[h, w, C]`` (float32, read-only, a view of the frame:
    no copy) from its header shape and frame; ProtocolError unless the shape is three
    positive integers within ``MAX_TILE_SIDE`` / ``MAX_SCORES_CHANNELS``, the frame has
    exactly that many bytes (at most ``MAX_SCORES_BYTES``) and every number is finite."""
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
        raise ProtocolError(f"scores shape must be [h, w, C] integers, got {shape!r}")
    h, w, c = shape
    if not (1 <= h <= MAX_TILE_SIDE and 1 <= w <= MAX_TILE_SIDE
            and 1 <= c <= MAX_SCORES_CHANNELS):
        raise ProtocolError(f"scores shape {shape} out of bounds (sides 1..{MAX_TILE_SIDE}, "
                            f"channels 1..{MAX_SCORES_CHANNELS})")
    size = h * w * c * SCORES_DTYPE.itemsize
    if size > MAX_SCORES_BYTES:
        raise ProtocolError(f"scores {shape} are {size} bytes, over {MAX_SCORES_BYTES}")
    view = _buffer(buf)
    if view.nbytes != size:
        raise ProtocolError(f"scores frame has {view.nbytes} bytes, shape {shape} needs {size}")
    scores = np.frombuffer(view, SCORES_DTYPE).reshape(h, w, c)
    if not _all_finite(scores):
        raise ProtocolError("non-finite numbers in the scores")
    if not SCORES_DTYPE.isnative:  # a big-endian host: native order for numpy
        scores = scores.astype(np.float32)
    return scores


def embeddings_from_buffer(shape: list, tiles: int, bufs: Sequence) -> np.ndarray:
    """A cached image's embeddings: float32 ``[tiles, D]`` from one frame, sized as the
    header says and all finite; ProtocolError otherwise."""
    if (len(shape) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                   for v in shape) or shape[0] != tiles or tiles < 1):
        raise ProtocolError(f"cached embeddings shaped {shape}, the image had {tiles} tiles")
    if len(bufs) != 1:
        raise ProtocolError(f"cached embeddings need 1 frame, got {len(bufs)}")
    if not 1 <= shape[1] <= MAX_EMBEDDING or tiles > MAX_RESULT_BOXES:
        raise ProtocolError(f"cached embeddings shaped {shape}: out of bounds")
    view = _buffer(bufs[0])
    if view.nbytes != tiles * shape[1] * EMBEDDING_DTYPE.itemsize:
        raise ProtocolError(f"cached embeddings frame has {view.nbytes} bytes, shape {shape}")
    vecs = np.frombuffer(view, EMBEDDING_DTYPE).astype(np.float32).reshape(tiles, shape[1])
    if not _all_finite(vecs):
        raise ProtocolError("non-finite numbers in the cached embeddings")
    return vecs


def embedding_from_buffer(dim: int, buf: Any) -> np.ndarray:
    """``dim`` float32 numbers (1..MAX_EMBEDDING), all finite; ProtocolError otherwise."""
    if not 1 <= dim <= MAX_EMBEDDING:
        raise ProtocolError(f"embedding length {dim} not in 1..{MAX_EMBEDDING}")
    view = _buffer(buf)
    if view.nbytes != dim * EMBEDDING_DTYPE.itemsize:
        raise ProtocolError(f"embedding frame has {view.nbytes} bytes, header says {dim}")
    vec = np.frombuffer(view, EMBEDDING_DTYPE).astype(np.float32)
    if not _all_finite(vec):
        raise ProtocolError("non-finite numbers in the embedding")
    return vec


@dataclass(frozen=True)
class JobEnd:
    """Ventilator → sink, after the last image: the totals that make a job completable."""

    TYPE: ClassVar[MsgType] = MsgType.JOB_END
    job: str
    images: int  # images announced and not withdrawn (the sink checks it against its own)
    tiles: int
    secret: str = field(default="", repr=False)  # the job's (JobStart.secret)

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> JobEnd:
        return cls(job=_name(h, "job"), images=_count(h, "images"), tiles=_count(h, "tiles"),
                   secret=_secret(h))


@dataclass(frozen=True)
class LiveStatus:
    """Ventilator → sink, every half second of a live job (``--follow``, a camera): how far
    behind it is, which only the ventilator knows (inputs waiting to be read are not
    announced yet). The sink folds it into the job's Progress for ``watch``."""

    TYPE: ClassVar[MsgType] = MsgType.LIVE
    job: str
    lag: float  # seconds since the oldest input not yet written arrived (0: none waits)
    backlog: int  # inputs arrived and not yet written
    dropped: int  # inputs dropped for being behind (--when-behind drop-oldest)
    secret: str = field(default="", repr=False)  # the job's (JobStart.secret)

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> LiveStatus:
        return cls(job=_name(h, "job"), lag=_float(h, "lag", lo=0.0),
                   backlog=_count(h, "backlog"), dropped=_count(h, "dropped"),
                   secret=_secret(h))


@dataclass(frozen=True)
class Heartbeat:
    """Worker → sink (→ PUB): sent from the work loop, so a stuck loop stops beating."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    worker: str
    host: str
    pid: int
    device: str
    model: str
    tiles_done: int
    tiles_failed: int
    tiles_per_s: float
    in_flight: int
    queue: int  # tiles received but not yet started (0: tiles start as soon as they arrive)
    uptime: float
    t: float = field(default_factory=time.time)
    period: float = 1.0  # seconds between beats: watchers judge lateness by it
    requests: int = 0  # infer requests this worker keeps in flight at most
    # The second-stage model it also runs (``--stage2``: two-stage jobs' crops), a ref;
    # None (left out of the header, as before the field existed): it serves ``model`` only.
    stage2: str | None = None
    # Messages from ventilators it refused: tiles beyond the credit it gave, and messages
    # that did not decode (docs/protocol.md, worker step 4). 0 is left out of the header.
    refused: int = 0

    def header(self) -> dict:  # the fields in order, spelled out: it is sent every second
        h = {"worker": self.worker, "host": self.host, "pid": self.pid,
             "device": self.device, "model": self.model, "tiles_done": self.tiles_done,
             "tiles_failed": self.tiles_failed, "tiles_per_s": self.tiles_per_s,
             "in_flight": self.in_flight, "queue": self.queue, "uptime": self.uptime,
             "t": self.t, "period": self.period, "requests": self.requests}
        if self.stage2 is not None:
            h["stage2"] = self.stage2
        if self.refused:
            h["refused"] = self.refused
        return h

    @property
    def models(self) -> tuple[str, ...]:
        """The models whose tiles this worker serves: its own, and its second stage's."""
        return (self.model,) if self.stage2 is None else (self.model, self.stage2)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence = ()) -> Heartbeat:
        period = _float(h, "period", optional=True)
        if period is not None and not period > 0:
            raise ProtocolError("heartbeat period must be positive")
        return cls(
            worker=_name(h, "worker"),
            host=_name(h, "host"),
            pid=_count(h, "pid"),
            device=_name(h, "device"),
            model=_name(h, "model"),
            tiles_done=_count(h, "tiles_done"),
            tiles_failed=_count(h, "tiles_failed"),
            tiles_per_s=_float(h, "tiles_per_s", lo=0.0),
            in_flight=_count(h, "in_flight", hi=MAX_CREDIT),
            queue=_count(h, "queue", hi=MAX_CREDIT),
            uptime=_float(h, "uptime", lo=0.0),
            t=_float(h, "t"),
            period=period or 1.0,
            requests=_count(h, "requests", optional=True, hi=MAX_CREDIT) or 0,
            stage2=_name(h, "stage2", optional=True),
            refused=_count(h, "refused", optional=True) or 0,
        )


@dataclass(frozen=True)
class Progress:
    """Sink → PUB: a full snapshot of one job (not a delta), so late subscribers catch up."""

    TYPE: ClassVar[MsgType] = MsgType.PROGRESS
    job: str
    images_seen: int  # announced by the ventilator so far
    images_done: int  # records written (failures included)
    images_failed: int
    tiles_seen: int
    tiles_done: int
    images_total: int | None = None  # known once the ventilator sent JobEnd
    tiles_total: int | None = None
    elapsed: float = 0.0
    done: bool = False
    detections: int = 0
    failures: tuple = ()  # the last few failed images: {"image", "path", "type", "message"}
    images_cached: int = 0  # records written from the result cache (in images_done)
    # A job that never ends by itself (a followed folder, a camera): the ventilator's last
    # LiveStatus. ``lag``: age in seconds of its oldest input not yet written; ``backlog``:
    # inputs waiting or in flight; ``dropped``: inputs dropped for being behind.
    live: bool = False
    lag: float | None = None
    backlog: int | None = None
    dropped: int = 0
    # A two-stage job (tasks.stage2): its kind ("identify", "plates", "ocr"), the objects
    # stage 1 found in the images merged so far (each a stage-2 tile) and those answered.
    stage2: str | None = None
    objects_seen: int = 0
    objects_done: int = 0

    def header(self) -> dict:
        h = _fields_header(self)
        h["failures"] = list(self.failures)
        if not self.live:  # the fields of a live job only
            for key in ("live", "lag", "backlog", "dropped"):
                del h[key]
        if self.stage2 is None:  # the fields of a two-stage job only
            for key in ("stage2", "objects_seen", "objects_done"):
                del h[key]
        return h

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Progress:
        return cls(
            job=_name(h, "job"),
            images_seen=_count(h, "images_seen"),
            images_done=_count(h, "images_done"),
            images_failed=_count(h, "images_failed"),
            tiles_seen=_count(h, "tiles_seen"),
            tiles_done=_count(h, "tiles_done"),
            images_total=_count(h, "images_total", optional=True),
            tiles_total=_count(h, "tiles_total", optional=True),
            elapsed=_float(h, "elapsed", lo=0.0),
            done=bool(_req(h, "done", bool)),
            detections=_count(h, "detections", optional=True) or 0,
            failures=tuple(_failure_list(h)),
            images_cached=_count(h, "images_cached", optional=True) or 0,
            live=bool(_req(h, "live", bool, optional=True)),
            lag=_float(h, "lag", optional=True, lo=0.0),
            backlog=_count(h, "backlog", optional=True),
            dropped=_count(h, "dropped", optional=True) or 0,
            stage2=_name(h, "stage2", optional=True),
            objects_seen=_count(h, "objects_seen", optional=True) or 0,
            objects_done=_count(h, "objects_done", optional=True) or 0,
        )


def _failure_list(h: dict) -> list[dict]:
    out = []
    for f in _req(h, "failures", list, optional=True) or []:
        if not isinstance(f, dict):
            raise ProtocolError("failures must be maps")
        out.append({"image": _name(f, "image"), "path": _text(f, "path"),
                    "type": _name(f, "type"), "message": _text(f, "message")})
    return out


@dataclass(frozen=True)
class JobDone:
    """Sink → PUB: the job's summary, re-published for a while so nobody misses it."""

    TYPE: ClassVar[MsgType] = MsgType.JOB_DONE
    job: str
    images: int
    failed: int
    tiles: int
    detections: int
    seconds: float
    out: str
    cached: int = 0  # images whose record came from the result cache
    # job_proof(secret, job, images, failed): only a sink that knows the job's secret can
    # make it, so a ventilator takes no other sink's word that its job is done.
    proof: str = ""

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> JobDone:
        return cls(
            job=_name(h, "job"),
            images=_count(h, "images"),
            failed=_count(h, "failed"),
            tiles=_count(h, "tiles"),
            detections=_count(h, "detections"),
            seconds=_float(h, "seconds", lo=0.0),
            out=_text(h, "out"),
            cached=_count(h, "cached", optional=True) or 0,
            proof=_name(h, "proof", optional=True) or "",
        )


@dataclass(frozen=True)
class SinkStatus:
    """Sink → PUB every second: the sink is alive; counts of what it refused."""

    TYPE: ClassVar[MsgType] = MsgType.SINK_STATUS
    sink: str
    host: str
    pid: int
    uptime: float
    jobs_active: int
    bad_messages: int
    t: float = field(default_factory=time.time)

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> SinkStatus:
        return cls(
            sink=_name(h, "sink"),
            host=_name(h, "host"),
            pid=_count(h, "pid"),
            uptime=_float(h, "uptime", lo=0.0),
            jobs_active=_count(h, "jobs_active"),
            bad_messages=_count(h, "bad_messages"),
            t=_float(h, "t"),
        )


@dataclass(frozen=True)
class Workers:
    """Sink → PUB every second: every worker the sink has heard from lately, with how long
    ago, so a watcher that just joined also learns of workers that have gone silent."""

    TYPE: ClassVar[MsgType] = MsgType.WORKERS
    sink: str
    workers: tuple  # Heartbeat headers, each with "age": seconds since the sink heard it
    t: float = field(default_factory=time.time)

    def header(self) -> dict:
        return {"sink": self.sink, "workers": list(self.workers), "t": self.t}

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Workers:
        entries = []
        for w in _req(h, "workers", list):
            if not isinstance(w, dict):
                raise ProtocolError("workers entries must be maps")
            beat = Heartbeat.parse(w)
            age = _float(w, "age", lo=0.0)
            entries.append({**beat.header(), "age": age})
        return cls(sink=_name(h, "sink"), workers=tuple(entries), t=_float(h, "t"))


@dataclass(frozen=True)
class Failure:
    """Sink → PUB: an image that ended with an error, the moment its record is written."""

    TYPE: ClassVar[MsgType] = MsgType.FAILURE
    job: str
    image: str
    path: str
    error: dict
    t: float = field(default_factory=time.time)

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Failure:
        error = _error(h)
        if error is None:
            raise ProtocolError("a failure needs its error")
        return cls(job=_name(h, "job"), image=_name(h, "image"), path=_text(h, "path"),
                   error=error, t=_float(h, "t"))


@dataclass(frozen=True)
class Ready:
    """Worker → ventilator: credit. ``credit`` more tiles may be sent to this worker (its
    first Ready offers every infer request; each finished tile frees one). Tiles go only to
    workers with credit, so load follows speed and nothing piles up at a slow worker."""

    TYPE: ClassVar[MsgType] = MsgType.READY
    worker: str
    credit: int

    def header(self) -> dict:  # spelled out: one is sent per tile
        return {"worker": self.worker, "credit": self.credit}

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Ready:
        return cls(worker=_name(h, "worker"), credit=_count(h, "credit", hi=MAX_CREDIT))


@dataclass(frozen=True)
class Bye:
    """Worker → ventilator: leaving cleanly; every tile it was given has been answered."""

    TYPE: ClassVar[MsgType] = MsgType.BYE
    worker: str

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Bye:
        return cls(worker=_name(h, "worker"))


@dataclass(frozen=True)
class Ack:
    """Sink → PUB (for ventilators): tiles the sink has received and images whose records
    are written (flushed to the journal). The ventilator releases leases on them; an ack
    that is lost only costs a re-send, which the sink merges once."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    sink: str
    job: str
    tiles: tuple = ()  # (image id, tile index) pairs
    images: tuple = ()  # image ids complete

    def header(self) -> dict:
        return {"sink": self.sink, "job": self.job, "tiles": [list(t) for t in self.tiles],
                "images": list(self.images)}

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Ack:
        tiles = []
        for t in _req(h, "tiles", list):
            if not isinstance(t, list) or len(t) != 2:
                raise ProtocolError("ack tiles must be [image, index] pairs")
            pair = {"image": t[0], "index": t[1]}
            tiles.append((_name(pair, "image"), _count(pair, "index")))
        return cls(sink=_name(h, "sink"), job=_name(h, "job"), tiles=tuple(tiles),
                   images=_names(h, "images"))


@dataclass(frozen=True, eq=False)
class Objects:
    """Sink → PUB (for ventilators): a two-stage job's image whose stage 1 is merged (each
    object once, after the border merge) and whose record waits for stage 2. The
    ventilator crops each object from the image's original pixels and sends the crops as
    stage-2 tiles with indices ``first``, ``first + 1``, … (``first`` is the image's
    stage-1 tile count; object ``i`` is tile ``first + i``).

    Frames: boxes, scores, labels (``detection_arrays``) and the points, float64
    ``[n, K, 2]`` (``points`` in the header is K). Published again while no stage-2
    result has come for the image (a PUB may drop it); a ventilator that has cut the
    image's crops already ignores the copy."""

    TYPE: ClassVar[MsgType] = MsgType.OBJECTS
    sink: str
    job: str
    image: str
    first: int
    detections: Detections  # with landmarks [n, K, 2]

    def header(self) -> dict:
        lm = self.detections.landmarks
        return {"sink": self.sink, "job": self.job, "image": self.image, "first": self.first,
                "n": len(self.detections), "points": 0 if lm is None else int(lm.shape[1])}

    def buffers(self) -> list:
        arrays = detection_arrays(self.detections)
        if self.detections.landmarks is not None:
            arrays.append(np.ascontiguousarray(self.detections.landmarks, POINTS_DTYPE))
        return arrays

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Objects:
        n = _int(h, "n")
        k = _count(h, "points", hi=MAX_POINTS)
        if len(bufs) != (4 if k else 3):
            raise ProtocolError(f"objects with {k} points need {4 if k else 3} frames")
        dets = detections_from_buffers(n, bufs[:3])
        if k:
            dets = Detections(dets.boxes, dets.scores, dets.labels,
                              points_from_buffer(n, k, bufs[3]))
        return cls(sink=_name(h, "sink"), job=_name(h, "job"), image=_name(h, "image"),
                   first=_count(h, "first"), detections=dets)


# How a job's records are delivered (JobStart ``options["records"]``): written to the
# sink's results file (the default, and the journal), published on the sink's PUB as
# ``zv.record`` (a Pool's requests: the caller gets the record, no file is touched), or both.
RECORD_DELIVERY = ("write", "publish", "both")
MAX_RECORD_BYTES = 16 << 20


@dataclass(frozen=True)
class Record:
    """Sink → PUB, for jobs that asked for their records (``options["records"]``
    ``"publish"`` or ``"both"``): one image's record, exactly the JSON line the results
    file would hold (UTF-8, without the newline), as frame 2. Sent the moment the image
    completes; the ventilator that owns the job hands it to its caller."""

    TYPE: ClassVar[MsgType] = MsgType.RECORD
    sink: str
    job: str
    image: str
    json: bytes  # the record as one JSON text

    def header(self) -> dict:
        return {"sink": self.sink, "job": self.job, "image": self.image}

    def buffers(self) -> list:
        return [self.json]

    def record(self) -> dict:
        """The record as a dict (JSON, never evaluated); ProtocolError if it is not one."""
        import json

        try:
            rec = json.loads(bytes(self.json).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"record is not JSON: {exc}") from None
        if not isinstance(rec, dict):
            raise ProtocolError("record is not a JSON object")
        return rec

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Record:
        if len(bufs) != 1:
            raise ProtocolError(f"a record needs 1 JSON frame, got {len(bufs)}")
        buf = _buffer(bufs[0])
        if buf.nbytes > MAX_RECORD_BYTES:
            raise ProtocolError(f"record of {buf.nbytes} bytes is over {MAX_RECORD_BYTES}")
        return cls(sink=_name(h, "sink"), job=_name(h, "job"), image=_name(h, "image"),
                   json=bytes(buf))


@dataclass(frozen=True)
class Withdraw:
    """Ventilator → sink: these images of the job are no longer wanted (their caller
    cancelled or its deadline passed). The sink forgets them and whatever arrived for
    them, writes no record, and drops their late results; they do not count towards the
    job's totals (``JobEnd`` counts only images not withdrawn)."""

    TYPE: ClassVar[MsgType] = MsgType.WITHDRAW
    job: str
    images: tuple = ()
    secret: str = field(default="", repr=False)  # the job's (JobStart.secret)

    def header(self) -> dict:
        return {"job": self.job, "images": list(self.images), "secret": self.secret}

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> Withdraw:
        return cls(job=_name(h, "job"), images=_names(h, "images"), secret=_secret(h))


# ---------------------------------------------------------------------------- training
# Data-parallel training of a classifier head (zmqvision.train; docs/protocol.md,
# "Training"). The master binds a ROUTER of its own; workers hear of it by a TrainInvite
# on their tile link and connect a DEALER to it. Parameters and gradients are one flat
# little-endian float64 vector laid out by ``layers`` (``train_param_count``): for each
# pair of consecutive widths (a, b), the weights a×b row-major, then the bias b.

TRAIN_PARAM_DTYPE = np.dtype("<f8")
TRAIN_X_DTYPE = np.dtype("<f4")
TRAIN_Y_DTYPE = np.dtype("<i4")
TRAIN_INDEX_DTYPE = np.dtype("<u4")
MAX_TRAIN_CLASSES = 10_000
MAX_TRAIN_WIDTH = 1 << 16  # an input (embedding) or hidden width
MAX_TRAIN_PARAMS = 1 << 24  # 128 MiB of float64
MAX_TRAIN_SHARD_BYTES = 256 << 20
MAX_TRAIN_SHARDS = 4096
MAX_TRAIN_MESSAGE_BYTES = MAX_TRAIN_SHARD_BYTES + (1 << 20)  # the sockets' maxmsgsize


def train_param_count(layers: Sequence[int]) -> int:
    """Numbers in the flat parameter vector of a head with these widths."""
    return sum(a * b + b for a, b in zip(layers, layers[1:], strict=False))


def _layers(h: dict) -> tuple[int, ...]:
    """``[input, classes]`` (softmax regression) or ``[input, hidden, classes]``."""
    v = _req(h, "layers", list)
    if len(v) not in (2, 3) or not all(type(x) is int and 1 <= x <= MAX_TRAIN_WIDTH
                                       for x in v):
        raise ProtocolError(f"'layers' must be 2 or 3 widths in 1..{MAX_TRAIN_WIDTH}")
    if not 2 <= v[-1] <= MAX_TRAIN_CLASSES:
        raise ProtocolError(f"a head has 2..{MAX_TRAIN_CLASSES} classes")
    if train_param_count(v) > MAX_TRAIN_PARAMS:
        raise ProtocolError(f"a head of over {MAX_TRAIN_PARAMS} parameters")
    return tuple(v)


def _counts(h: dict, key: str, hi: int) -> tuple[int, ...]:
    v = _req(h, key, list)
    if len(v) > MAX_TRAIN_SHARDS or not all(type(x) is int and 0 <= x <= hi for x in v):
        raise ProtocolError(f"{key!r} must be at most {MAX_TRAIN_SHARDS} counts in 0..{hi}")
    return tuple(v)


def _f64_vector(buf: Any, n: int, what: str) -> np.ndarray:
    """``n`` finite float64 numbers, read-only, without a copy."""
    view = _buffer(buf)
    if view.nbytes != n * TRAIN_PARAM_DTYPE.itemsize:
        raise ProtocolError(f"{what} frame has {view.nbytes} bytes, expected {n} float64")
    vec = np.frombuffer(view, TRAIN_PARAM_DTYPE)
    if not np.isfinite(vec).all():
        raise ProtocolError(f"non-finite numbers in the {what}")
    return vec


def _arity(bufs: Sequence, n: int, what: str) -> None:
    if len(bufs) != n:
        raise ProtocolError(f"{what} needs {n} data frames, got {len(bufs)}")


@dataclass(frozen=True)
class TrainInvite:
    """Ventilator (the training master's pool) → worker, on the tile link: a training
    session is on at ``endpoint``; a worker that can train connects a DEALER there (its
    routing id its worker id) and says TrainHello. Sent again to workers that join."""

    TYPE: ClassVar[MsgType] = MsgType.TRAIN_INVITE
    session: str
    endpoint: str

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> TrainInvite:
        endpoint = _name(h, "endpoint")
        if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise ProtocolError("'endpoint' must be a tcp://, ipc:// or inproc:// address")
        return cls(session=_name(h, "session"), endpoint=endpoint)


@dataclass(frozen=True)
class TrainHello:
    """Worker → master: ready to take shards of ``session``."""

    TYPE: ClassVar[MsgType] = MsgType.TRAIN_HELLO
    session: str
    worker: str

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> TrainHello:
        return cls(session=_name(h, "session"), worker=_name(h, "worker"))


@dataclass(frozen=True, eq=False)  # arrays: compared by identity
class TrainShard:
    """Master → worker, once per shard it is given: the shard's examples. Frames: ``x``
    float32 ``[rows, dim]`` row-major (the standardised embeddings), ``y`` int32
    ``[rows]`` class ids in ``0..len(class_weights)-1``. ``class_weights``: each class's
    weight in the loss (unbalanced folders)."""

    TYPE: ClassVar[MsgType] = MsgType.TRAIN_SHARD
    session: str
    shard: int
    x: np.ndarray
    y: np.ndarray
    class_weights: tuple[float, ...]

    def header(self) -> dict:
        rows, dim = self.x.shape
        return {"session": self.session, "shard": self.shard, "rows": int(rows),
                "dim": int(dim), "class_weights": [float(w) for w in self.class_weights]}

    def buffers(self) -> list:
        return [np.ascontiguousarray(self.x, TRAIN_X_DTYPE),
                np.ascontiguousarray(self.y, TRAIN_Y_DTYPE)]

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> TrainShard:
        _arity(bufs, 2, "a train shard")
        rows = _count(h, "rows", hi=MAX_TRAIN_SHARD_BYTES)
        dim = _count(h, "dim", hi=MAX_TRAIN_WIDTH)
        weights = _req(h, "class_weights", list)
        if not 2 <= len(weights) <= MAX_TRAIN_CLASSES:
            raise ProtocolError(f"a shard has 2..{MAX_TRAIN_CLASSES} class weights")
        if not all(isinstance(w, _NUM) and not isinstance(w, bool) for w in weights):
            raise ProtocolError("class weights must be numbers")
        weights = tuple(_finite(w, "class_weights") for w in weights)
        if any(w < 0 for w in weights):
            raise ProtocolError("class weights must not be negative")
        if dim < 1 or rows * dim * TRAIN_X_DTYPE.itemsize > MAX_TRAIN_SHARD_BYTES:
            raise ProtocolError(f"a shard of {rows}x{dim} is over the bound")
        xv, yv = _buffer(bufs[0]), _buffer(bufs[1])
        if xv.nbytes != rows * dim * 4 or yv.nbytes != rows * 4:
            raise ProtocolError("shard frames do not match rows x dim")
        x = np.frombuffer(xv, TRAIN_X_DTYPE).reshape(rows, dim)
        y = np.frombuffer(yv, TRAIN_Y_DTYPE)
        if not np.isfinite(x).all():
            raise ProtocolError("non-finite numbers in a shard")
        if rows and (y.min() < 0 or y.max() >= len(weights)):
            raise ProtocolError("a shard's class id is out of range")
        return cls(session=_name(h, "session"), shard=_count(h, "shard", hi=MAX_TRAIN_SHARDS),
                   x=x, y=y, class_weights=weights)


@dataclass(frozen=True, eq=False)  # arrays: compared by identity
class TrainStep:
    """Master → worker, each step: the parameters (frame 0, float64, ``layers``' layout)
    and, for each of ``shards`` this worker holds, ``counts[i]`` row indices into that
    shard (frame 1: uint32, concatenated in ``shards`` order): the part of the batch it
    holds. The worker answers one TrainGrad per shard listed."""

    TYPE: ClassVar[MsgType] = MsgType.TRAIN_STEP
    session: str
    step: int
    layers: tuple[int, ...]
    params: np.ndarray
    shards: tuple[int, ...]
    counts: tuple[int, ...]
    indices: np.ndarray

    def header(self) -> dict:
        return {"session": self.session, "step": self.step, "layers": list(self.layers),
                "shards": list(self.shards), "counts": list(self.counts)}

    def buffers(self) -> list:
        return [np.ascontiguousarray(self.params, TRAIN_PARAM_DTYPE),
                np.ascontiguousarray(self.indices, TRAIN_INDEX_DTYPE)]

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> TrainStep:
        _arity(bufs, 2, "a train step")
        layers = _layers(h)
        shards = _counts(h, "shards", MAX_TRAIN_SHARDS)
        counts = _counts(h, "counts", MAX_TRAIN_SHARD_BYTES)
        if len(shards) != len(counts) or len(set(shards)) != len(shards):
            raise ProtocolError("'shards' and 'counts' must be as long, shards distinct")
        iv = _buffer(bufs[1])
        if iv.nbytes != sum(counts) * TRAIN_INDEX_DTYPE.itemsize:
            raise ProtocolError("index frame does not match the counts")
        return cls(session=_name(h, "session"), step=_count(h, "step"), layers=layers,
                   params=_f64_vector(bufs[0], train_param_count(layers), "parameter"),
                   shards=shards, counts=counts,
                   indices=np.frombuffer(iv, TRAIN_INDEX_DTYPE))


@dataclass(frozen=True, eq=False)  # arrays: compared by identity
class TrainGrad:
    """Worker → master: one shard's part of a step. ``grad`` (frame 0, float64, the
    parameters' layout) is the SUM over its ``examples`` of each example's class weight
    times the gradient of its cross-entropy; ``loss`` the same sum of losses, ``weight``
    the sum of the class weights (the master divides the totals by the total weight)."""

    TYPE: ClassVar[MsgType] = MsgType.TRAIN_GRAD
    session: str
    step: int
    shard: int
    worker: str
    examples: int
    weight: float
    loss: float
    grad: np.ndarray

    def header(self) -> dict:
        return {"session": self.session, "step": self.step, "shard": self.shard,
                "worker": self.worker, "examples": self.examples, "weight": self.weight,
                "loss": self.loss, "n": int(self.grad.size)}

    def buffers(self) -> list:
        return [np.ascontiguousarray(self.grad, TRAIN_PARAM_DTYPE)]

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> TrainGrad:
        _arity(bufs, 1, "a train gradient")
        n = _count(h, "n", hi=MAX_TRAIN_PARAMS)
        return cls(session=_name(h, "session"), step=_count(h, "step"),
                   shard=_count(h, "shard", hi=MAX_TRAIN_SHARDS), worker=_name(h, "worker"),
                   examples=_count(h, "examples"), weight=_float(h, "weight", lo=0.0),
                   loss=_float(h, "loss", lo=0.0), grad=_f64_vector(bufs[0], n, "gradient"))


@dataclass(frozen=True)
class TrainEnd:
    """Master → worker: the session is over; the worker drops its shards and the link."""

    TYPE: ClassVar[MsgType] = MsgType.TRAIN_END
    session: str

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> TrainEnd:
        return cls(session=_name(h, "session"))


@dataclass(frozen=True)
class TrainProgress:
    """Training master → PUB (``zmqvision train --events``), after each step and epoch:
    what ``zmqvision watch`` shows. ``val_accuracy`` is absent until an epoch ends."""

    TYPE: ClassVar[MsgType] = MsgType.TRAIN_PROGRESS
    session: str
    epoch: int
    epochs: int
    step: int
    steps: int  # steps per epoch
    loss: float
    workers: int
    val_accuracy: float | None = None
    t: float = field(default_factory=time.time)

    def header(self) -> dict:
        return _fields_header(self)

    @classmethod
    def parse(cls, h: dict, bufs: Sequence) -> TrainProgress:
        return cls(session=_name(h, "session"), epoch=_count(h, "epoch"),
                   epochs=_count(h, "epochs"), step=_count(h, "step"),
                   steps=_count(h, "steps"), loss=_float(h, "loss", lo=0.0),
                   workers=_count(h, "workers"),
                   val_accuracy=_float(h, "val_accuracy", optional=True, lo=0.0, hi=1.0),
                   t=_float(h, "t"))


Message = (
    JobStart | ImageInfo | Tile | Result | JobEnd | Heartbeat | Progress | JobDone | SinkStatus
    | Workers | Failure | Ready | Bye | Ack | Record | Withdraw | LiveStatus | ImageWork
    | Objects
    | TrainInvite | TrainHello | TrainShard | TrainStep | TrainGrad | TrainEnd | TrainProgress
)

_CLASSES: dict[MsgType, type] = {
    cls.TYPE: cls
    for cls in (JobStart, ImageInfo, Tile, Result, JobEnd, Heartbeat, Progress, JobDone,
                SinkStatus, Workers, Failure, Ready, Bye, Ack, Record, Withdraw, LiveStatus,
                ImageWork, Objects, TrainInvite, TrainHello, TrainShard, TrainStep, TrainGrad,
                TrainEnd, TrainProgress)
}
assert set(_CLASSES) == set(MsgType), "every message type has its class"
# _built skips __init__: only for classes whose __init__ does nothing else.
assert not any(hasattr(cls, "__post_init__") or hasattr(cls, "__slots__")
               for cls in (ImageInfo, Tile, Result)), "_built would skip their checks"

# Looked up once here rather than per message (an Enum's value and hash are Python code):
# frame 0 → (type, parser) for decode, class → frame 0 for encode.
_PARSERS: dict[bytes, tuple[MsgType, Any]] = {t.tag: (t, cls.parse) for t, cls in _CLASSES.items()}
_TAGS: dict[type, bytes] = {cls: t.tag for t, cls in _CLASSES.items()}


def _field_values(names: tuple[str, ...]) -> Any:
    get = attrgetter(*names)
    return get if len(names) > 1 else lambda msg: (get(msg),)


# Messages whose header is their fields (_fields_header): names, and a getter of values.
_FIELD_ACCESS: dict[type, tuple[tuple[str, ...], Any]] = {
    cls: (names, _field_values(names))
    for cls in _CLASSES.values()
    for names in [tuple(f.name for f in fields(cls))]
}
# Those whose header used to be dataclasses.asdict(self): their fields may be converted
# as asdict converted them (encode's fallback).
_ASDICT_HEADERS = frozenset({JobStart, JobEnd, LiveStatus, Heartbeat, Progress, JobDone,
                             SinkStatus, Failure, Ready, Bye, TrainInvite, TrainHello, TrainEnd,
                             TrainProgress})


# ---------------------------------------------------------------------------- encode / decode


def encode(msg: Message) -> list:
    """Frames for ``socket.send_multipart(frames, copy=False)``; arrays are not copied."""
    header = msg.header()  # a new dict each call, ours to add the version to
    header["v"] = VERSION
    try:
        packed = _pack(header)
    except TypeError:
        if type(msg) not in _ASDICT_HEADERS:
            raise
        # A dataclass in a field: dataclasses.asdict made it a map, which is sent.
        packed = _pack({k: _as_plain(v) for k, v in header.items()})
    tag = _TAGS.get(type(msg))
    frames: list = [msg.TYPE.tag if tag is None else tag, packed]
    buffers = getattr(msg, "buffers", None)
    if buffers is not None:
        frames.extend(buffers())
    return frames


def _pack(header: dict) -> bytes:
    try:
        return msgpack.packb(header, use_bin_type=True)
    except UnicodeEncodeError:  # a path that is not UTF-8: it travels as its bytes
        return msgpack.packb(_for_wire(header), use_bin_type=True)


def _header_alone(frames: Sequence, kind: MsgType) -> dict | None:
    """The header map of a message of ``kind`` that failed to decode, read on its own
    (within MAX_HEADER_BYTES, this protocol's version), for ``tile_identity`` and
    ``image_work_identity``; None when it is not one or has no such header. Raises on
    garbage (its callers catch everything)."""
    if peek_type(frames) is not kind or len(frames) < 2:
        return None
    raw = _buffer(frames[1])
    if raw.nbytes > MAX_HEADER_BYTES:
        return None
    h = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    if not isinstance(h, dict) or type(h.get("v")) is not int or h["v"] != VERSION:
        return None
    return h


def tile_identity(frames: Sequence) -> tuple[str, str, int, int] | None:
    """``(job, image, index, attempt)`` of a ``zv.tile`` that failed to decode, read from
    its header alone, when those four are valid: a worker answers such a tile with a
    ``bad_tile`` error result (docs/protocol.md) instead of leaving it to the lease. None
    when the message is not a tile or its header does not name one."""
    try:
        h = _header_alone(frames, MsgType.TILE)
        if h is None:
            return None
        return (_name(h, "job"), _name(h, "image"), _count(h, "index"),
                _count(h, "attempt", optional=True) or 0)
    except Exception:  # garbage of any kind: nothing to answer
        return None


def image_work_identity(frames: Sequence) -> tuple[str, str, int, int] | None:
    """``(job, image, tiles, attempt)`` of a ``zv.image_work`` that failed to decode, read
    from its header alone, ``tiles`` being how many boxes it plans (1..MAX_IMAGE_WORK_TILES):
    as ``tile_identity``, the worker answers each of those tiles ``bad_tile``. None when
    the message is not an image's work or its header does not name one."""
    try:
        h = _header_alone(frames, MsgType.IMAGE_WORK)
        if h is None:
            return None
        boxes = h.get("boxes")
        if type(boxes) is not list or not 1 <= len(boxes) <= MAX_IMAGE_WORK_TILES:
            return None
        return (_name(h, "job"), _name(h, "image"), len(boxes),
                _count(h, "attempt", optional=True) or 0)
    except Exception:  # garbage of any kind: nothing to answer
        return None


def peek_type(frames: Sequence) -> MsgType:
    """The message type from frame 0 alone, without parsing the rest."""
    if not frames:
        raise ProtocolError("empty message")
    tag = bytes(_buffer(frames[0]))
    t = _BY_TAG.get(tag)
    if t is None:
        raise ProtocolError(f"unknown message type {tag[:32]!r}")
    return t


def decode(frames: Sequence, expect: tuple[MsgType, ...] | None = None) -> Message:
    """Parse and validate one multipart message; any defect raises ProtocolError."""
    if not frames:
        raise ProtocolError("empty message")
    tag = frames[0]
    if type(tag) is not bytes:
        tag = bytes(_buffer(tag))
    entry = _PARSERS.get(tag)
    if entry is None:
        raise ProtocolError(f"unknown message type {tag[:32]!r}")
    t, parse = entry
    if expect is not None and t not in expect:
        raise ProtocolError(f"unexpected {t.value} here")
    if len(frames) < 2:
        raise ProtocolError(f"{t.value} lacks its header frame")
    raw = _buffer(frames[1])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {raw.nbytes} bytes is over {MAX_HEADER_BYTES}")
    try:
        h = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError(f"header is not msgpack: {exc}") from None
    if not isinstance(h, dict):
        raise ProtocolError("header is not a map")
    v = h.get("v")
    if type(v) is not int or v != VERSION:  # noqa: E721 - True == 1, and 1.0 == 1
        raise ProtocolError(f"protocol version {v!r}, this side speaks {VERSION}")
    try:
        return parse(h, frames[2:])
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ProtocolError(f"bad {t.value}: {exc}") from None
