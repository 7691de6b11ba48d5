"""protocol.py's fast paths (issue 18) change nothing a peer can see.

- Every message is encoded to the same bytes as by ``REFERENCE``'s protocol.py (read with
  ``git show`` and imported as a module of its own), and as pinned in
  ``protocol_frames_294e020.json`` (which needs no git history: frames 0 and 1 in full,
  the data frames by SHA-256).
- Every message, valid or damaged in one header field or one frame, is decoded by both to
  the same object, or refused by both with the same error (type and text): the fast
  paths accept exactly what the old checks accepted, and a refusal still names the first
  defect in the same order.

A deliberate change to the wire format changes these expectations: move REFERENCE to the commit
that made it and regenerate the JSON (``python -m tests.test_protocol_speed_equivalence``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from types import ModuleType

import msgpack
import numpy as np
import pytest
import zmq

from tests.test_protocol_roundtrip import CASES, ERROR, MODEL, _beat, _dets
from zmqvision import protocol as P
from zmqvision.boxes import Detections

REFERENCE = "294e020"
ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).with_name(f"protocol_frames_{REFERENCE}.json")


@dataclass(frozen=True)
class _Settings:  # a dataclass inside a header field: asdict made it a map
    size: tuple
    name: str


def _pixels(h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


_TILE = dict(job="j", image="i", index=0, box=(0.0, 0.0, 24.0, 16.0), scale=1.0,
             model="m@1", pixels=_pixels(16, 24))
_JPEG = P.encode_jpeg(_TILE["pixels"])
_LANDMARKS = Detections.of([[1, 2, 30, 40], [5, 5, 9, 9]], [0.9, 0.4], [0, 0],
                           np.arange(20, dtype=np.float64).reshape(2, 5, 2))
_NOT_UTF8 = b"photos/caf\xe9.jpg".decode("utf-8", "surrogateescape")

# Beyond the round-trip cases: every variant of the per-tile messages, paths that are not
# UTF-8, the asdict fallback, and the shapes of ids and batches the roles send.
EXTRA = [
    ("tile raw, no min score", P.Tile(**_TILE)),
    ("tile int box", P.Tile(**{**_TILE, "box": (0, 0, 24, 16)})),
    ("tile jpeg, encoded", P.Tile(**_TILE, encoding="jpeg", encoded=_JPEG)),
    ("tile classify", P.Tile(**_TILE, min_score=0.5, task={"top_k": 5, "embed": True})),
    ("tile stage 1", P.Tile(**_TILE, task={"points": True}, attempt=2)),
    ("tile stage 2", P.Tile(**_TILE, task={"stage": 2})),
    ("result n=0", P.Result(job="j", image="i", index=0, worker="w", model="m@1",
                            detections=Detections.empty(), infer_ms=9.25)),
    ("result n=5", P.Result(job="j", image="i" * 24, index=0, worker="host-1-ab", model="m@1",
                            detections=_dets(5, seed=3), infer_ms=9.25, attempt=3)),
    ("result int infer_ms", P.Result(job="j", image="i", index=1, worker="w", model="m@1",
                                     detections=_dets(2), infer_ms=9)),
    ("result points", P.Result(job="j", image="i", index=0, worker="w", model="m@1",
                               detections=_LANDMARKS, infer_ms=1.0)),
    ("result embedding", P.Result(job="j", image="i", index=4, worker="w", model="m@1",
                                  detections=_dets(1), embedding=np.linspace(-1, 1, 8))),
    ("result scores", P.Result(job="j", image="i", index=0, worker="w", model="m@1",
                               detections=Detections.empty(),
                               scores=np.linspace(0, 1, 4 * 3 * 2).reshape(4, 3, 2))),
    ("result error", P.Result(job="j", image="i", index=0, worker="w", model="m@1",
                              detections=Detections.empty(), error=ERROR)),
    ("image not utf-8", P.ImageInfo(job="j", image="i", path=_NOT_UTF8, seq=5, width=10,
                                    height=10, tiles=1, hash="h", abspath="/" + _NOT_UTF8)),
    ("image error not utf-8", P.ImageInfo(job="j", image="i", path=_NOT_UTF8, seq=5,
                                          error={"type": "e", "message": _NOT_UTF8})),
    ("image cached error", P.ImageInfo(job="j", image="i", path="p", seq=5, error=ERROR,
                                       cached=P.Cached(tiles=1, detections=Detections.empty()))),
    ("image work task", P.ImageWork(job="j", image="i", model="m@1", width=30, height=20,
                                    boxes=((0, 0, 30, 20),), full=(True,), data=_JPEG,
                                    task={"top_k": 3, "embed": False}, max_pixels=10**6)),
    ("ready", P.Ready(worker="host-1234-ab12", credit=1)),
    ("heartbeat numpy float", _beat(tiles_per_s=np.float64(3.25), uptime=np.float64(2))),
    ("ack empty", P.Ack(sink="s", job="j")),
    ("ack 50+50", P.Ack(sink="s", job="j", tiles=tuple((f"{i:024x}", i % 3) for i in range(50)),
                        images=tuple(f"{i:024x}" for i in range(50)))),
    ("progress stage2", P.Progress(job="j", images_seen=3, images_done=2, images_failed=0,
                                   tiles_seen=3, tiles_done=3, elapsed=1.0, stage2="plates",
                                   objects_seen=4, objects_done=1)),
    ("job start model path", P.JobStart(job="j", model={**MODEL, "path": "/m/" + _NOT_UTF8},
                                        tiling={}, merge={}, created=1.0, host="h",
                                        secret="s" * 32)),
    ("job start dataclass", P.JobStart(job="j", model=MODEL, tiling={"cfg": _Settings((1, 2), "x")},
                                       merge=_Settings((3,), "y"), created=1.0, host="h")),
    ("job end secret", P.JobEnd(job="j", images=1, tiles=1, secret="f" * 32)),
    ("failure not utf-8", P.Failure(job="j", image="i", path=_NOT_UTF8, error=ERROR, t=2.0)),
    ("job done proof", P.JobDone(job="j", images=1, failed=0, tiles=1, detections=0,
                                 seconds=0.5, out="/o", proof="ab" * 16)),
    ("withdraw secret", P.Withdraw(job="j", images=("a",), secret="x")),
    ("sink status", P.SinkStatus(sink="s", host="h", pid=2, uptime=1.0, jobs_active=1,
                                 bad_messages=3, t=1.7e9)),
    ("workers", P.Workers(sink="s", workers=({**_beat().header(), "age": 0.5},), t=1.7e9)),
    ("bye", P.Bye(worker="w")),
    ("record", P.Record(sink="s", job="j", image="i", json=b'{"image":"a.jpg"}')),
    ("live status", P.LiveStatus(job="j", lag=0.75, backlog=2, dropped=5, secret="k")),
    ("progress live", P.Progress(job="j", images_seen=3, images_done=2, images_failed=1,
                                 tiles_seen=3, tiles_done=2, images_total=3, tiles_total=3,
                                 elapsed=9.5, done=True, detections=4, images_cached=1,
                                 failures=({"image": "i", "path": _NOT_UTF8, **ERROR},),
                                 live=True, lag=0.75, backlog=2, dropped=5)),
    ("objects", P.Objects(sink="s", job="j", image="i", first=5, detections=_LANDMARKS)),
    ("objects no points", P.Objects(sink="s", job="j", image="i", first=1,
                                    detections=_dets(2))),
    ("train invite", P.TrainInvite(session="t", endpoint="ipc:///tmp/x")),
    ("train hello", P.TrainHello(session="t", worker="w")),
    ("train shard", P.TrainShard(session="t", shard=0, x=np.ones((2, 3), np.float32),
                                 y=np.array([1, 0], np.int32), class_weights=(1.0, 2.0))),
    ("train step", P.TrainStep(session="t", step=1, layers=(3, 4, 2), params=np.arange(26.0),
                               shards=(0, 2), counts=(1, 1),
                               indices=np.array([1, 0], np.uint32))),
    ("train grad", P.TrainGrad(session="t", step=1, shard=0, worker="w", examples=1,
                               weight=1.0, loss=0.5, grad=np.zeros(26))),
    ("train end", P.TrainEnd(session="t")),
    ("train progress", P.TrainProgress(session="t", epoch=0, epochs=1, step=1, steps=1,
                                       loss=1.5, workers=1, t=1.0)),
]
# The round-trip cases too (their names are their places in that list: not pinned).
ALL = EXTRA + [(f"{type(m).__name__} {i}", m) for i, m in enumerate(CASES)]


def _wire(frames) -> list[bytes]:
    return [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in frames]


def _digest(frames: list[bytes]) -> list[str]:
    return [f.hex() if i < 2 else "sha256:" + hashlib.sha256(f).hexdigest()
            for i, f in enumerate(frames)]


def _reference() -> ModuleType:
    """protocol.py as it was at REFERENCE, imported under a name of its own."""
    src = subprocess.run(["git", "show", f"{REFERENCE}:zmqvision/protocol.py"], cwd=ROOT,
                         check=True, capture_output=True, timeout=60).stdout
    name = f"_zv_protocol_{REFERENCE}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses find their module by name
    exec(compile(src, f"{REFERENCE}:zmqvision/protocol.py", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def old() -> ModuleType:
    try:
        return _reference()
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"no git history with {REFERENCE} here (the JSON test still pins the bytes)")


def _in(module: ModuleType, value):
    """A message (or Cached) of ours rebuilt with ``module``'s class of the same name."""
    if is_dataclass(value) and type(value).__module__ == P.__name__:
        cls = getattr(module, type(value).__name__)
        known = {f.name for f in fields(cls)}
        # A field added since (Cached.embeddings, Heartbeat.refused) is only ever
        # compared at its default (None, or 0 for a count left out of the header at 0).
        assert all(getattr(value, f.name) == f.default for f in fields(value)
                   if f.name not in known), f"{value!r} uses a field {REFERENCE} lacks"
        return cls(**{f.name: _in(module, getattr(value, f.name)) for f in fields(value)
                      if f.name in known})
    return value


@pytest.mark.parametrize("name,msg", ALL, ids=[n for n, _ in ALL])
def test_frames_are_the_reference_bytes(old, name, msg):
    assert _wire(P.encode(msg)) == _wire(old.encode(_in(old, msg)))


def test_frames_are_the_pinned_bytes():
    pinned = json.loads(GOLDEN.read_text())
    assert set(pinned) == {n for n, _ in EXTRA}
    assert {type(m) for _, m in EXTRA} == set(P._CLASSES.values()), "a type is not pinned"
    for name, msg in EXTRA:
        assert _digest(_wire(P.encode(msg))) == pinned[name], name


def test_a_jpeg_tile_made_by_encode_is_the_reference_bytes(old):
    """A tile whose JPEG ``buffers`` makes (Pillow's bytes: not pinned in the JSON)."""
    msg = P.Tile(**_TILE, encoding="jpeg")
    assert _wire(P.encode(msg)) == _wire(old.encode(_in(old, msg)))


@pytest.mark.parametrize("msg", [P.Ready(worker="w", credit=np.int64(1)),
                                 _beat(pid=np.int32(3)),
                                 P.Result(job="j", image="i", index=np.int64(0), worker="w",
                                          model="m", detections=Detections.empty())],
                         ids=["Ready", "Heartbeat", "Result"])
def test_what_could_not_be_encoded_still_cannot(old, msg):
    with pytest.raises(TypeError) as new_exc:
        P.encode(msg)
    with pytest.raises(TypeError) as old_exc:
        old.encode(_in(old, msg))
    assert str(new_exc.value) == str(old_exc.value)


# ------------------------------------------------------------------------------ decoding


def _same(a, b, where: str = "") -> None:
    """``a`` (ours) and ``b`` (the reference's) are the same value: for messages, the
    same fields in the same order; for arrays, dtype, shape, numbers and writability."""
    if is_dataclass(a) and not isinstance(a, type):
        assert type(a).__name__ == type(b).__name__, where
        names = [f.name for f in fields(a)]
        theirs = [f.name for f in fields(b)]
        # Fields added since REFERENCE (Cached.embeddings, Heartbeat.refused) come last,
        # at their default.
        assert names[:len(theirs)] == theirs, where
        default = {f.name: f.default for f in fields(a)}
        assert all(getattr(a, n) == default[n] for n in names[len(theirs):]), where
        assert list(vars(a)) == names, f"{where}: attributes {list(vars(a))}"
        for n in theirs:
            _same(getattr(a, n), getattr(b, n), f"{where}.{n}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert (a.dtype, a.shape, a.flags.writeable, a.flags.c_contiguous) == (
            b.dtype, b.shape, b.flags.writeable, b.flags.c_contiguous), where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, zmq.Frame | memoryview | bytearray):
        assert type(a) is type(b) and bytes(a) == bytes(b), where
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def _outcome(module: ModuleType, frames: list, expect: tuple[str, ...] | None = None):
    """``("ok", message)`` or ``("error", class name, text)``; ``expect``: type names."""
    if expect is not None:
        expect = tuple(module.MsgType[t] for t in expect)
    try:
        return ("ok", module.decode(frames, expect))
    except Exception as exc:  # noqa: BLE001 - compared, whatever it is
        return ("error", type(exc).__name__, str(exc))


def _agree(old: ModuleType, frames: list, what: str,
           expect: tuple[str, ...] | None = None) -> None:
    ours, theirs = _outcome(P, frames, expect), _outcome(old, frames, expect)
    assert ours[0] == theirs[0], f"{what}: ours {ours}, reference {theirs}"
    if ours[0] == "ok":
        _same(ours[1], theirs[1], what)
    else:
        assert ours == theirs, what


# Values put in place of each header field (and of each field of a nested map): wrong
# types, bools where numbers go, floats where counts go, non-finite numbers, bounds.
BAD_VALUES = [
    None, True, False, 0, 1, 3, -1, 2, 10_000, 10_001, (1 << 53) - 1, 1 << 53, (1 << 64) - 1,
    -(1 << 63), 0.0, 0.5, 1.0, 3.0, -0.5, 1.5, 1e308, float("nan"), float("inf"),
    float("-inf"), "", "x", "uint8", "raw", "jpeg", "x" * 129, "x" * 1025, b"", b"\xff\xfe",
    [], [0, 0], [16, 24, 3], [16, 24, 3.0], [16, 24, True], [16, 24, 4], [0.0, 0.0, 24.0, 16.0],
    [24.0, 0.0, 0.0, 16.0], [0.0, 0.0, 1e308, 1e308], [1e308, 1e308, 1e308, 1e308],
    [0.0, float("nan"), 1.0, 1.0], [0, 0, 24, 16], ["i", 0], [["i", 0]], [["i", -1]],
    [["i", 0, 1]], [[1, 0]], [["x" * 1025, 0]], ["a", 1], ["x" * 1025], [True, False],
    [[0, 0, 30, 20]], {}, {"a": 1},
    {"top_k": 5}, {"points": True}, {"stage": 2}, {"stage": 1}, {"type": "t", "message": "m"},
    {"tiles": 0, "n": 0}, [4, 3, 2],
]


def _mutations(h: dict):
    """(what, header) for each field of ``h`` (and of its nested maps) removed or set to
    each of BAD_VALUES."""
    for key in list(h):
        if key == "v":
            continue
        without = dict(h)
        del without[key]
        yield f"without {key}", without
        for value in BAD_VALUES:
            yield f"{key}={value!r:.40}", {**h, key: value}
        if isinstance(h[key], dict):
            for what, inner in _mutations(h[key]):
                yield f"{key}.{what}", {**h, key: inner}


@pytest.mark.parametrize("name,msg", ALL, ids=[n for n, _ in ALL])
def test_every_damaged_header_is_refused_alike(old, name, msg):
    frames = _wire(P.encode(msg))
    _agree(old, frames, "as sent")
    _agree(old, [zmq.Frame(f) for f in frames], "as received (zmq.Frame)")
    h = msgpack.unpackb(frames[1], raw=False)
    for what, header in _mutations(h):
        _agree(old, [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]], what)


@pytest.mark.parametrize("name,msg", ALL, ids=[n for n, _ in ALL])
def test_every_damaged_frame_is_refused_alike(old, name, msg):
    frames = _wire(P.encode(msg))
    variants = {
        "no frames": [], "tag only": frames[:1], "unknown tag": [b"zv.nope", *frames[1:]],
        "header not msgpack": [frames[0], b"\xc1", *frames[2:]],
        "header not a map": [frames[0], msgpack.packb([1, 2]), *frames[2:]],
        "no version": [frames[0], msgpack.packb({"job": "j"}), *frames[2:]],
        "version 2": [frames[0], msgpack.packb({**msgpack.unpackb(frames[1]), "v": 2}),
                      *frames[2:]],
        "version true": [frames[0], msgpack.packb({**msgpack.unpackb(frames[1]), "v": True}),
                         *frames[2:]],
        "an extra frame": [*frames, b"\0" * 8],
        "a frame short": frames[:-1],
    }
    for i in range(2, len(frames)):
        f = frames[i]
        variants[f"frame {i} cut"] = [*frames[:i], f[:-1], *frames[i + 1:]]
        variants[f"frame {i} longer"] = [*frames[:i], f + f[:8], *frames[i + 1:]]
        if len(f) >= 8:
            nan = bytearray(f)
            nan[-8:] = np.array([np.nan], "<f8").tobytes()
            variants[f"frame {i} nan tail"] = [*frames[:i], bytes(nan), *frames[i + 1:]]
            inf = bytearray(f)
            inf[:4] = np.array([np.inf], "<f4").tobytes()
            variants[f"frame {i} inf head"] = [*frames[:i], bytes(inf), *frames[i + 1:]]
    for what, damaged in variants.items():
        _agree(old, damaged, what)
    _agree(old, frames, "not expected here", expect=("BYE",) if msg.TYPE.name != "BYE" else ())
    _agree(old, frames, "expected here", expect=("RESULT", "IMAGE", msg.TYPE.name))
    assert P.tile_identity(frames) == old.tile_identity(frames)


def test_huge_finite_numbers_are_still_accepted(old):
    """Numbers whose sum overflows are each finite: a detection is not refused for it."""
    big = Detections.of([[1e308, 1e308, 1.5e308, 1.5e308]] * 3, [3e38, 3e38, 3e38], [0, 1, 2])
    msg = P.Result(job="j", image="i", index=0, worker="w", model="m", detections=big)
    frames = _wire(P.encode(msg))
    _agree(old, frames, "huge boxes")
    assert len(P.decode(frames).detections) == 3


def _write_golden(module: ModuleType) -> None:
    """The JSON, from ``module``'s encode (REFERENCE's: the bytes that must not change)."""
    frames = {n: _digest(_wire(module.encode(_in(module, m)))) for n, m in EXTRA}
    GOLDEN.write_text(json.dumps(frames, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    _write_golden(_reference() if "--current" not in sys.argv else P)
