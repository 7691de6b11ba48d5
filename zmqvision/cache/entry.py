"""One cache entry: the result of one image, small and versioned.

An entry is a msgpack map (never pickle: a cache shared over the network is as untrusted as
a socket)::

    {"v": 1, "key": str, "model": "name@version", "w": int, "h": int, "tiles": int,
     "n": int, "boxes": bin (n×4 little-endian float64), "scores": bin (n float32),
     "labels": bin (n int32), "error": null | {"type": str, "message": str}, "t": float,
     "emb": [rows, D], "embs": bin (rows×D little-endian float32)}

The arrays are the merged detections exactly as the sink wrote them, so a record made
from a hit is identical to the one made from inference. A two-stage job's entry (``run
--identify``, ``--model plates``/``ocr``) has ``"s2"`` as well: the map a cached
``zv.image`` carries as ``cached.stage2`` (``protocol.Stage2Cached``: each object's
points and its stage-2 answer, a face's embedding or a reader's text and score; never
an identity) with its frame's bytes as ``"frame"``; its detections are then every
object stage 2 answered, and the sink makes the record from them as from a worker's
answers. A segmentation job's entry has ``"seg"``: the map a cached ``zv.image``
carries as ``cached.segment`` (``protocol.SegmentCached``: ``png``, the mask file's byte
count, and ``counts``, the pixels of each class id) with the mask file's bytes as
``"frame"`` (at most ``protocol.MAX_CACHED_MASK_BYTES``); its detections are empty. A hit
writes those bytes as the image's mask and makes the record from the counts (COCO RLE
from the PNG's rows). ``emb``/``embs`` (a classification
``--embed`` job's embeddings, one row per tile in tile order) are there only when the
entry has them: an entry without them (every entry of an older version) reads as before,
with ``embeddings`` None, and a version-1 reader that does not know them ignores them;
``s2`` and ``seg`` likewise (``stage2``/``segment`` None: for a two-stage or a
segmentation job, a miss; ``ResultCache.lookup``).
``key`` repeats the key the entry was stored under: an entry found under another key (a
foreign or mixed-up entry) is refused like a corrupt one. Anything that does not parse
raises ``EntryError``; callers treat it as a miss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from zmqvision.boxes import Detections
from zmqvision.protocol import (
    EMBEDDING_DTYPE,
    ProtocolError,
    SegmentCached,
    Stage2Cached,
    detection_arrays,
    detections_from_buffers,
    embeddings_from_buffer,
)

ENTRY_VERSION = 1


class EntryError(ValueError):
    """An entry that is not ours, is damaged, or has another version: a miss."""


@dataclass(frozen=True, eq=False)
class Entry:
    """The result of one image under one key. ``error`` set: detections are empty."""

    key: str
    model: str
    width: int
    height: int
    tiles: int
    detections: Detections
    error: dict | None = None
    created: float = 0.0
    embeddings: np.ndarray | None = None  # float32 [tiles, D]: an --embed job's
    stage2: Stage2Cached | None = None  # a two-stage job's: per object, points and answer
    segment: SegmentCached | None = None  # a segmentation job's: the mask PNG and counts


def encode(entry: Entry) -> bytes:
    boxes, scores, labels = (a.tobytes() for a in detection_arrays(entry.detections))
    m = {
        "v": ENTRY_VERSION, "key": entry.key, "model": entry.model, "w": entry.width,
        "h": entry.height, "tiles": entry.tiles, "n": len(entry.detections),
        "boxes": boxes, "scores": scores, "labels": labels,
        "error": entry.error, "t": float(entry.created),
    }
    if entry.embeddings is not None:
        embs = np.ascontiguousarray(entry.embeddings, EMBEDDING_DTYPE)
        m["emb"] = list(embs.shape)
        m["embs"] = memoryview(embs).cast("B")  # packed as bin, without a tobytes copy
    if entry.stage2 is not None:
        m["s2"] = {**entry.stage2.header(), "frame": entry.stage2.frame()}
    if entry.segment is not None:  # the PNG packed as bin, not copied first
        m["seg"] = {**entry.segment.header(), "frame": entry.segment.frame()}
    return msgpack.packb(m, use_bin_type=True)


def _get(m: dict, key: str, types: type | tuple[type, ...]) -> Any:
    value = m.get(key)
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise EntryError(f"{key!r} is a bool")
    if not isinstance(value, types):
        raise EntryError(f"{key!r} is {type(value).__name__}")
    return value


def _unpack(data: bytes) -> dict:
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise EntryError(f"not msgpack ({exc})") from None
    if not isinstance(m, dict):
        raise EntryError("not a map")
    if m.get("v") != ENTRY_VERSION:
        raise EntryError(f"entry version {m.get('v')!r}, this side reads {ENTRY_VERSION}")
    return m


def decode(data: bytes, key: str) -> Entry:
    """The entry stored under ``key``; any defect raises EntryError."""
    m = _unpack(data)
    if _get(m, "key", str) != key:
        raise EntryError("entry belongs to another key")
    n = _get(m, "n", int)
    bufs = [_get(m, k, bytes) for k in ("boxes", "scores", "labels")]
    try:  # the wire's own checks: count, sizes, finite numbers
        detections = detections_from_buffers(n, bufs)
    except ProtocolError as exc:
        raise EntryError(str(exc)) from None
    if (detections.labels < 0).any():
        raise EntryError("negative class id")
    error = m.get("error")
    if error is not None:
        if (not isinstance(error, dict) or not isinstance(error.get("type"), str)
                or not isinstance(error.get("message"), str)):
            raise EntryError("error is not {type, message}")
        if n:
            raise EntryError("an error entry has detections")
        error = {"type": error["type"], "message": error["message"]}
    width, height, tiles = _get(m, "w", int), _get(m, "h", int), _get(m, "tiles", int)
    if min(width, height, tiles) < 0:
        raise EntryError("negative size")
    created = float(_get(m, "t", (int, float)))
    if not math.isfinite(created):
        raise EntryError("non-finite time")
    embeddings = None
    if "emb" in m:
        try:
            embeddings = embeddings_from_buffer(_get(m, "emb", list), tiles,
                                                [_get(m, "embs", bytes)])
        except ProtocolError as exc:
            raise EntryError(str(exc)) from None
    stage2 = None
    if "s2" in m:
        s2 = _get(m, "s2", dict)
        try:
            stage2 = Stage2Cached.parse(s2, n, [_get(s2, "frame", bytes)])
        except ProtocolError as exc:
            raise EntryError(str(exc)) from None
    segment = None
    if "seg" in m:
        seg = _get(m, "seg", dict)
        if n or error is not None:
            raise EntryError("a mask entry has detections or an error")
        from zmqvision.segment.png import chunks

        try:
            segment = SegmentCached.parse(seg, [_get(seg, "frame", bytes)], width, height)
            for _ in chunks(segment.png):  # whole, every chunk's CRC right: not written
                pass  # to the masks folder as a damaged file
        except (ProtocolError, ValueError) as exc:
            raise EntryError(str(exc)) from None
    return Entry(key=key, model=_get(m, "model", str), width=width, height=height, tiles=tiles,
                 detections=detections, error=error, created=created, embeddings=embeddings,
                 stage2=stage2, segment=segment)


def created_of(data: bytes) -> float | None:
    """When an entry was made, for pruning; None if it does not parse (prune it too)."""
    try:
        t = _unpack(data).get("t")
    except EntryError:
        return None
    return float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None


# Errors that the bytes themselves cause, whatever the settings or the moment: the only
# errors worth caching. (``unsupported_format`` messages depend on the file's name, and
# ``too_large`` on ``max_pixels``; tile errors may be transient.)
CACHEABLE_ERRORS = frozenset({"corrupt_image"})


def detach_path(error: dict, path: str) -> dict | None:
    """An error made storable: its message without the leading ``PATH: `` (the same bytes
    may come back under another name). None when it should not be cached."""
    prefix = f"{path}: "
    if error.get("type") not in CACHEABLE_ERRORS or not error["message"].startswith(prefix):
        return None
    return {"type": error["type"], "message": error["message"][len(prefix):]}


def attach_path(error: dict | None, path: str) -> dict | None:
    """A stored error told about the file it is reported for now."""
    if error is None:
        return None
    return {"type": error["type"], "message": f"{path}: {error['message']}"}
