"""The wire format: round trips, zero-copy pixels, and garbage that must only ever raise
ProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqvision import protocol
from zmqvision.boxes import Detections

P = protocol


def _roundtrip(msg):
    frames = protocol.encode(msg)
    wire = [bytes(memoryview(f)) if not isinstance(f, bytes) else f for f in frames]
    return protocol.decode(wire)


def _tile(shape=(300, 300, 3)):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, shape, dtype=np.uint8)
    return P.Tile(job="j1", image="i1", index=3, box=(10, 20, 310, 320), scale=1.0,
                  model="ssd@1", pixels=pixels)


def _result(n=5):
    rng = np.random.default_rng(2)
    boxes = np.sort(rng.uniform(0, 1000, (n, 4)), axis=1)
    dets = Detections.of(boxes[:, [0, 1, 2, 3]], rng.uniform(0, 1, n), rng.integers(0, 20, n))
    return P.Result(job="j1", image="i1", index=2, worker="w", model="ssd@1", detections=dets,
                    infer_ms=3.5)


SIMPLE = [
    P.JobStart(job="j", model={"ref": "m@1", "labels": ["a", "b"], "name": "m"},
               tiling={"tile_size": [300, 300]}, merge={"method": "nmm"}),
    protocol.ImageInfo(job="j", image="i", path="a/b.jpg", seq=0, width=4, height=3, tiles=1,
                hash="blake2b:00"),
    protocol.ImageInfo(job="j", image="i", path="x.jpg", seq=1,
                error={"type": "corrupt_image", "message": "bad"}),
    P.JobEnd(job="j", images=3, tiles=40),
    P.Heartbeat(worker="w", host="h", pid=1, device="CPU", model="m@1", tiles_done=5,
                tiles_failed=0, tiles_per_s=1.5, in_flight=2, queue=4, uptime=3.0),
    P.Progress(job="j", images_seen=3, images_done=1, images_failed=0, tiles_seen=9,
               tiles_done=4, images_total=None),
    P.JobDone(job="j", images=3, failed=1, tiles=9, detections=7, seconds=1.2, out="/x"),
    P.SinkStatus(sink="s", host="h", pid=2, uptime=1.0, jobs_active=0, bad_messages=0),
]


@pytest.mark.parametrize("msg", SIMPLE, ids=lambda m: type(m).__name__)
def test_simple_messages_roundtrip(msg):
    assert _roundtrip(msg) == msg


def test_tile_roundtrip_and_version_in_header():
    t = _tile((120, 200, 3))
    frames = protocol.encode(t)
    assert frames[0] == b"zv.tile"
    assert msgpack.unpackb(frames[1])["v"] == P.VERSION
    back = _roundtrip(t)
    assert np.array_equal(back.pixels, t.pixels)
    assert back.box == t.box and back.index == 3 and back.model == "ssd@1"


def test_result_roundtrip_exact():
    r = _result(7)
    back = _roundtrip(r)
    assert np.array_equal(back.detections.boxes, r.detections.boxes)
    assert np.array_equal(back.detections.scores, r.detections.scores)
    assert np.array_equal(back.detections.labels, r.detections.labels)
    empty = _roundtrip(P.Result(job="j", image="i", index=0, worker="w", model="m",
                                detections=Detections.empty(),
                                error={"type": "x", "message": "y"}))
    assert len(empty.detections) == 0 and empty.error == {"type": "x", "message": "y"}


@pytest.mark.timeout(20)
def test_tile_pixels_travel_zero_copy_over_a_real_socket():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://zc")
        b.connect("inproc://zc")
        t = _tile()
        a.send_multipart(protocol.encode(t), copy=False)
        assert b.poll(5000)
        frames = b.recv_multipart(copy=False)
        got = protocol.decode(frames)
        assert np.array_equal(got.pixels, t.pixels)
        # The array is a view of the received frame, not a copy of it.
        assert np.shares_memory(got.pixels, np.frombuffer(frames[2].buffer, np.uint8))
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


def test_ids_are_stable_and_distinct():
    assert P.image_id("blake2b:aa", "x.jpg") == P.image_id("blake2b:aa", "x.jpg")
    assert P.image_id("blake2b:aa", "x.jpg") != P.image_id("blake2b:aa", "y.jpg")
    assert P.image_id("blake2b:aa", "x.jpg") != P.image_id("blake2b:bb", "x.jpg")
    assert P.new_job_id() != P.new_job_id()


def _header(**h):
    h.setdefault("v", P.VERSION)
    return msgpack.packb(h)


BAD = {
    "empty": [],
    "unknown tag": [b"hello", b"x"],
    "no header": [b"zv.tile"],
    "header not msgpack": [b"zv.job_end", b"\xc1\xc1\xc1"],
    "header not a map": [b"zv.job_end", msgpack.packb([1, 2])],
    "wrong version": [b"zv.job_end", _header(v=99, job="j", images=1, tiles=1)],
    "no version": [b"zv.job_end", msgpack.packb({"job": "j", "images": 1, "tiles": 1})],
    "missing field": [b"zv.job_end", _header(job="j", images=1)],
    "wrong type": [b"zv.job_end", _header(job="j", images="1", tiles=1)],
    "bool for int": [b"zv.job_end", _header(job="j", images=True, tiles=1)],
    "tile without pixels": [b"zv.tile", _header(job="j", image="i", index=0, box=[0, 0, 1, 1],
                                                 scale=1.0, model="m", attempt=0,
                                                 shape=[1, 1, 3], dtype="uint8")],
    "tile short pixels": [b"zv.tile", _header(job="j", image="i", index=0, box=[0, 0, 1, 1],
                                               scale=1.0, model="m", attempt=0,
                                               shape=[2, 2, 3], dtype="uint8"), b"\0" * 5],
    "tile huge shape": [b"zv.tile", _header(job="j", image="i", index=0, box=[0, 0, 1, 1],
                                             scale=1.0, model="m", attempt=0,
                                             shape=[10**9, 10**9, 3], dtype="uint8"), b""],
    "tile bad box": [b"zv.tile", _header(job="j", image="i", index=0, box=[0, 0, 1],
                                          scale=1.0, model="m", attempt=0,
                                          shape=[1, 1, 3], dtype="uint8"), b"\0\0\0"],
    "result wrong sizes": [b"zv.result", _header(job="j", image="i", index=0, worker="w",
                                                  model="m", n=2, error=None, attempt=0,
                                                  infer_ms=0), b"", b"", b""],
    "result nan": [b"zv.result", _header(job="j", image="i", index=0, worker="w", model="m",
                                          n=1, error=None, attempt=0, infer_ms=0),
                   np.array([np.nan, 0, 1, 1], "<f8").tobytes(), b"\0" * 4, b"\0" * 4],
    "error not a map": [b"zv.image", _header(job="j", image="i", path="p", seq=0, width=0,
                                              height=0, tiles=0, error="boom")],
    "image without tiles or error": [b"zv.image", _header(job="j", image="i", path="p", seq=0,
                                                           width=1, height=1, tiles=0)],
}


@pytest.mark.parametrize("frames", list(BAD.values()), ids=list(BAD))
def test_garbage_raises_protocol_error_only(frames):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frames)


def test_expect_filters_types():
    frames = protocol.encode(SIMPLE[3])
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frames, (P.MsgType.TILE,))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_random_frames_never_escape_as_other_errors(frames):
    with contextlib.suppress(protocol.ProtocolError):
        protocol.decode(frames)


@settings(max_examples=300, deadline=None)
@given(
    tag=st.sampled_from([t.tag for t in P.MsgType]),
    header=st.dictionaries(
        st.sampled_from(["v", "job", "image", "index", "n", "tiles", "shape", "box", "error",
                         "model", "labels", "scale", "worker", "seq", "path", "width"]),
        st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=5), st.floats(),
                  st.lists(st.integers(0, 5), max_size=4), st.booleans()),
    ),
    extra=st.lists(st.binary(max_size=48), max_size=4),
)
def test_structured_garbage_never_escapes(tag, header, extra):
    header.setdefault("v", P.VERSION)
    with contextlib.suppress(protocol.ProtocolError):
        protocol.decode([tag, msgpack.packb(header), *extra])


def _photo_tile(encoding="jpeg"):
    from tests.conftest import EXAMPLES
    from zmqvision.io import read_image

    pixels = read_image(EXAMPLES / "astronaut.jpg").pixels[50:350, 100:400]
    return P.Tile(job="j1", image="i1", index=0, box=(100, 50, 400, 350), scale=1.0,
                  model="ssd@1", pixels=np.ascontiguousarray(pixels), encoding=encoding)


def test_jpeg_tiles_are_small_and_close_to_the_pixels():
    t = _photo_tile()
    frames = protocol.encode(t)
    assert msgpack.unpackb(frames[1])["encoding"] == "jpeg"
    assert len(frames[2]) < t.pixels.nbytes / 5  # a photo compresses well
    back = _roundtrip(t)
    assert back.encoding == "jpeg" and back.pixels.shape == t.pixels.shape
    err = np.abs(back.pixels.astype(np.int16) - t.pixels).mean()
    assert 0 < err < 2.0  # lossy, but barely


def _with_header(frames, **changes):
    h = msgpack.unpackb(frames[1])
    h.update(changes)
    return [frames[0], msgpack.packb(h), *frames[2:]]


def test_a_header_without_encoding_is_raw():
    t = _tile((8, 8, 3))
    frames = protocol.encode(t)
    h = msgpack.unpackb(frames[1])
    del h["encoding"]
    back = protocol.decode([frames[0], msgpack.packb(h), bytes(memoryview(frames[2]))])
    assert back.encoding == "raw" and np.array_equal(back.pixels, t.pixels)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "png", "wrong_size", "huge_shape",
                                    "grey", "unknown_encoding"])
def test_bad_jpeg_tiles_are_protocol_errors(damage):
    import io

    from PIL import Image

    t = _photo_tile()
    frames = [f if isinstance(f, bytes) else bytes(memoryview(f)) for f in protocol.encode(t)]
    data = frames[2]
    if damage == "truncated":
        frames[2] = data[: len(data) // 2]
    elif damage == "garbage":
        frames[2] = bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8))
    elif damage == "png":
        out = io.BytesIO()
        Image.fromarray(t.pixels).save(out, "PNG")
        frames[2] = out.getvalue()
    elif damage == "wrong_size":
        frames = _with_header(frames, shape=[200, 300, 3])
    elif damage == "huge_shape":  # a decompression bomb's claim: never allocated
        frames = _with_header(frames, shape=[16000, 16000, 3])
    elif damage == "grey":
        out = io.BytesIO()
        Image.fromarray(t.pixels).convert("L").save(out, "JPEG")
        frames[2] = out.getvalue()
    elif damage == "unknown_encoding":
        frames = _with_header(frames, encoding="webp")
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frames)


def test_unknown_encoding_is_refused_when_sending():
    with pytest.raises(ValueError):
        protocol.encode(_photo_tile("webp"))


def test_a_result_claiming_too_many_boxes_is_refused():
    n = P.MAX_RESULT_BOXES + 1
    frames = [b"zv.result",
              msgpack.packb({"v": P.VERSION, "job": "j", "image": "i", "index": 0,
                             "worker": "w", "model": "m", "n": n, "error": None,
                             "attempt": 0}),
              np.zeros((n, 4), "<f8").tobytes(), np.zeros(n, "<f4").tobytes(),
              np.zeros(n, "<i4").tobytes()]
    with pytest.raises(protocol.ProtocolError, match="detection count"):
        protocol.decode(frames)


@pytest.mark.parametrize("tiling", [{"tile_size": b"\x00"}, {1: 2}, {"x": float("nan")},
                                    {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}])
def test_job_settings_must_be_plain_json(tiling):
    frames = protocol.encode(P.JobStart(job="j", model={"ref": "m@1", "labels": []}, tiling=tiling,
                                 merge={}))
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frames)


def test_an_image_answered_from_the_cache_carries_its_detections_exactly():
    dets = Detections(np.array([[1.5, 2.0, 3.0, 4.0]]), np.array([0.91003716], np.float32),
                      np.array([2], np.int32))
    msg = protocol.ImageInfo(job="j", image="i", path="a.jpg", seq=3, width=9, height=8,
                             tiles=0, hash="blake2b:00",
                             cached=protocol.Cached(tiles=6, detections=dets, created=5.0))
    frames = protocol.encode(msg)
    assert len(frames) == 5
    got = protocol.decode([bytes(memoryview(f)) if not isinstance(f, bytes) else f for f in frames])
    assert got.cached.tiles == 6 and got.cached.created == 5.0 and got.tiles == 0
    assert got.cached.detections.scores.tolist() == dets.scores.tolist()
    assert got.cached.detections.boxes.tolist() == dets.boxes.tolist()
    # Not cached: no frames beyond the header, as before.
    plain = protocol.ImageInfo(job="j", image="i", path="a", seq=0, tiles=1)
    assert len(protocol.encode(plain)) == 2


@pytest.mark.parametrize("change", [
    {"tiles": 2},  # a cached image has no tiles coming
    {"cached": {"tiles": 1, "n": 1}},  # frames missing for the claimed detection
    {"cached": {"tiles": -1, "n": 0}},
    {"cached": {"tiles": 1, "n": 0}, "error": {"type": "corrupt_image", "message": "x"},
     "_frames": 1},
])
def test_inconsistent_cached_images_are_refused(change):
    dets = Detections.empty() if "_frames" not in change else Detections(
        np.zeros((1, 4)), np.ones(1, np.float32), np.zeros(1, np.int32))
    frames = protocol.encode(protocol.ImageInfo(job="j", image="i", path="a", seq=0, tiles=0,
                                  cached=protocol.Cached(tiles=1, detections=dets)))
    header = msgpack.unpackb(frames[1])
    header.update({k: v for k, v in change.items() if not k.startswith("_")})
    if "_frames" in change:
        header["cached"]["n"] = 1
    frames[1] = msgpack.packb(header)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode([bytes(memoryview(f)) if not isinstance(f, bytes) else f for f in frames])


def test_a_heartbeat_says_what_its_worker_refused_and_a_bad_count_is_refused():
    beat = P.Heartbeat(worker="w", host="h", pid=1, device="CPU", model="m@1", tiles_done=5,
                       tiles_failed=0, tiles_per_s=1.0, in_flight=0, queue=0, uptime=1.0,
                       refused=7)
    frames = P.encode(beat)
    assert P.decode(frames).refused == 7
    header = msgpack.unpackb(frames[1])
    assert "refused" not in msgpack.unpackb(P.encode(
        P.Heartbeat(**{**vars(beat), "refused": 0}))[1])  # as before the field existed
    for bad in (-1, 1.5, True, "7"):
        with pytest.raises(P.ProtocolError, match="refused"):
            P.decode([frames[0], msgpack.packb({**header, "refused": bad})])
