"""Decode-time validation: every field's type, sign, finiteness, depth and length.

Each case is one field of an otherwise valid message changed to what a buggy or hostile
sender could put there; ``decode`` must refuse it with ProtocolError (and nothing else),
so that no receiving loop, cache key or watcher ever meets it.
"""

from __future__ import annotations

import contextlib
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_protocol_roundtrip import CASES
from zmqvision import protocol as P
from zmqvision.cache.key import job_fingerprint

NAN, INF = float("nan"), float("inf")


def _case(cls):
    return next(m for m in CASES if type(m) is cls)


def _frames(msg, **changes) -> list[bytes]:
    """``msg`` on the wire with header keys changed (a dotted key reaches into a map)."""
    frames = [bytes(memoryview(f)) for f in P.encode(msg)]
    header = msgpack.unpackb(frames[1])
    for key, value in changes.items():
        target = header
        *path, last = key.split(".")
        for part in path:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[int(last) if isinstance(target, list) else last] = value
    frames[1] = msgpack.packb(header)
    return frames


def _ids(cases) -> list[str]:
    return [f"{cls.__name__}.{key}" for cls, key in cases]


def _refused(msg, **changes) -> None:
    with pytest.raises(P.ProtocolError):
        P.decode(_frames(msg, **changes))


# ------------------------------------------------------------------------- version


@pytest.mark.parametrize("v", [True, 1.0, "1", None])
def test_the_version_must_be_the_integer_1(v):
    """``v: true`` passed as version 1 (True == 1 in Python), and so did 1.0."""
    _refused(_case(P.JobEnd), v=v)


# ------------------------------------------------------------------ negative counts

NEGATIVE = [
    (P.JobEnd, "images"), (P.JobEnd, "tiles"),
    (P.Tile, "index"), (P.Tile, "attempt"),
    (P.Result, "index"), (P.Result, "attempt"),
    (P.Heartbeat, "pid"), (P.Heartbeat, "tiles_done"), (P.Heartbeat, "tiles_failed"),
    (P.Heartbeat, "in_flight"), (P.Heartbeat, "queue"), (P.Heartbeat, "requests"),
    (P.Progress, "images_seen"), (P.Progress, "images_done"), (P.Progress, "images_failed"),
    (P.Progress, "tiles_seen"), (P.Progress, "tiles_done"), (P.Progress, "images_total"),
    (P.Progress, "tiles_total"), (P.Progress, "detections"), (P.Progress, "images_cached"),
    (P.JobDone, "images"), (P.JobDone, "failed"), (P.JobDone, "tiles"),
    (P.JobDone, "detections"), (P.JobDone, "cached"),
    (P.SinkStatus, "pid"), (P.SinkStatus, "jobs_active"), (P.SinkStatus, "bad_messages"),
    (P.Ready, "credit"), (P.ImageInfo, "seq"), (P.ImageInfo, "width"),
    (P.Workers, "workers.0.tiles_done"), (P.Ack, "tiles.1.1"),
]


@pytest.mark.parametrize(("cls", "key"), NEGATIVE, ids=_ids(NEGATIVE))
def test_negative_counts_are_refused(cls, key):
    """A JobEnd with a negative count completed a job at once; negative tile indices and
    attempts, heartbeat counters and progress counts passed too."""
    _refused(_case(cls), **{key: -1})


NEGATIVE_FLOATS = [(P.Heartbeat, "uptime"), (P.Heartbeat, "tiles_per_s"),
                   (P.Result, "infer_ms"), (P.Progress, "elapsed"), (P.JobDone, "seconds"),
                   (P.SinkStatus, "uptime"), (P.Workers, "workers.0.age"),
                   (P.Heartbeat, "period")]


@pytest.mark.parametrize(("cls", "key"), NEGATIVE_FLOATS,
                         ids=_ids(NEGATIVE_FLOATS))
def test_negative_durations_and_rates_are_refused(cls, key):
    _refused(_case(cls), **{key: -0.5})


def test_counts_beyond_what_a_double_holds_exactly_are_refused():
    _refused(_case(P.JobEnd), images=1 << 53)
    _refused(_case(P.Heartbeat), requests=P.MAX_CREDIT + 1)  # a credit claim, not a count


# ------------------------------------------------------------------ float for int

FLOAT_FOR_INT = [(P.JobEnd, "images"), (P.Tile, "index"), (P.Result, "attempt"),
                 (P.Heartbeat, "tiles_done"), (P.Ready, "credit"), (P.ImageInfo, "tiles"),
                 (P.Progress, "images_done"), (P.Ack, "tiles.0.1")]


@pytest.mark.parametrize(("cls", "key"), FLOAT_FOR_INT,
                         ids=_ids(FLOAT_FOR_INT))
def test_a_float_where_an_int_is_expected_is_refused(cls, key):
    """Even a whole one: 3.0 for a count means the sender computes it wrongly."""
    _refused(_case(cls), **{key: 3.0})


def test_an_int_where_a_float_is_expected_is_accepted():
    beat = P.decode(_frames(_case(P.Heartbeat), uptime=5, tiles_per_s=0, t=1700000000))
    assert beat.uptime == 5.0 and isinstance(beat.uptime, float)


# ------------------------------------------------------------------ finite numbers

NON_FINITE = [
    (P.Heartbeat, "uptime"), (P.Heartbeat, "tiles_per_s"), (P.Heartbeat, "t"),
    (P.Heartbeat, "period"), (P.JobStart, "created"), (P.Tile, "scale"), (P.Tile, "min_score"),
    (P.Tile, "box.2"), (P.Result, "infer_ms"), (P.Progress, "elapsed"),
    (P.JobDone, "seconds"), (P.SinkStatus, "uptime"), (P.SinkStatus, "t"),
    (P.Workers, "t"), (P.Workers, "workers.0.age"), (P.Workers, "workers.0.uptime"),
    (P.Failure, "t"), (P.ImageInfo, "cached.created"),
    (P.JobStart, "model.score_threshold"), (P.JobStart, "options.score_threshold"),
    (P.JobStart, "tiling.overlap"), (P.JobStart, "merge.threshold"),
]


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("cls", "key"), NON_FINITE, ids=_ids(NON_FINITE))
def test_every_float_is_finite(cls, key, value):
    """A heartbeat with ``uptime: NaN`` crashed every ``watch`` while the sink relayed it."""
    msg = next(m for m in CASES if type(m) is cls and (cls is not P.ImageInfo or m.cached))
    _refused(msg, **{key: value})


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_score_thresholds_are_probabilities(value):
    _refused(_case(P.Tile), min_score=value)
    _refused(_case(P.JobStart), **{"options.score_threshold": value})


def test_a_tile_box_must_not_be_inverted():
    _refused(_case(P.Tile), box=[300.0, 20.0, 10.0, 320.0])


# ------------------------------------------------------------------ the job's model


def _nested_list(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("model", [
    _nested_list(500),  # killed the sink: RecursionError in the cache key
    {**_case(P.JobStart).model, "extra": _nested_list(500)},
    {**_case(P.JobStart).model, "preprocess": {"a": {"b": {"c": {"d": {"e": 1}}}}}},
    {**_case(P.JobStart).model, "ref": 5},
    {**_case(P.JobStart).model, "ref": "m" * (P.MAX_NAME_CHARS + 1)},
    {**_case(P.JobStart).model, "labels": ["face", 1]},
    {**_case(P.JobStart).model, "labels": "face"},
    {**_case(P.JobStart).model, "name": ["centerface"]},
    {**_case(P.JobStart).model, "version": {"v": 1}},
    {**_case(P.JobStart).model, "input_size": [640]},
    {**_case(P.JobStart).model, "input_size": [640.0, 640.0]},
    {**_case(P.JobStart).model, "input_size": [0, 640]},
    {**_case(P.JobStart).model, "score_threshold": "high"},
    {**_case(P.JobStart).model, "nms_threshold": 2.0},
    {**_case(P.JobStart).model, "preprocess": [1, 2]},
    {**_case(P.JobStart).model, "sha256": None, "source": float("nan")},
], ids=["list-500-deep", "deep-extra", "5-deep", "ref-int", "ref-long", "label-int",
        "labels-str", "name-list", "version-map", "size-short", "size-float", "size-zero",
        "threshold-str", "nms-2", "preprocess-list", "nan-anywhere"])
def test_the_model_map_is_typed_plain_json_of_bounded_depth(model):
    _refused(_case(P.JobStart), model=model)


def test_a_decoded_model_gives_a_cache_key():
    """Whatever passes decode, the cache key (which recurses into the model) can take."""
    start = P.decode(_frames(_case(P.JobStart)))
    assert len(job_fingerprint(start)) == 32


@pytest.mark.parametrize("records", ["print", 1, None])
def test_record_delivery_must_be_known(records):
    if records is None:  # null: the default ("write")
        assert P.decode(_frames(_case(P.JobStart), **{"options.records": None}))
        return
    _refused(_case(P.JobStart), **{"options.records": records})


# ------------------------------------------------------------------ lengths

LONG_NAMES = [(P.JobEnd, "job"), (P.Result, "worker"), (P.Tile, "image"), (P.Ready, "worker"),
              (P.Heartbeat, "host"), (P.Heartbeat, "model"), (P.ImageInfo, "hash"),
              (P.Failure, "error.type"), (P.SinkStatus, "sink"), (P.Ack, "images.0"),
              (P.Withdraw, "images.1"), (P.Record, "image"), (P.Ack, "tiles.0.0")]


@pytest.mark.parametrize(("cls", "key"), LONG_NAMES, ids=_ids(LONG_NAMES))
def test_ids_are_bounded(cls, key):
    _refused(_case(cls), **{key: "x" * (P.MAX_NAME_CHARS + 1)})
    P.decode(_frames(_case(cls), **{key: "x" * P.MAX_NAME_CHARS}))


@pytest.mark.parametrize(("cls", "key"), [(P.ImageInfo, "path"), (P.ImageInfo, "abspath"),
                                          (P.Failure, "path"), (P.Failure, "error.message"),
                                          (P.JobDone, "out")])
def test_paths_and_messages_are_bounded_but_roomy(cls, key):
    P.decode(_frames(_case(cls), **{key: "p/" * 4096}))  # deeper than PATH_MAX allows
    _refused(_case(cls), **{key: "x" * (P.MAX_TEXT_CHARS + 1)})


# ------------------------------------------------------------------ anything else


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.binary(max_size=4), st.lists(st.integers(-3, 3), max_size=3),
    st.builds(_nested_list, st.integers(1, 500)),
    st.dictionaries(st.text(max_size=3), st.floats(), max_size=2),
)


@settings(max_examples=600, deadline=None)
@given(index=st.integers(0, len(CASES) - 1), data=st.data(), value=HOSTILE)
def test_one_hostile_field_is_refused_or_harmless(index, data, value):
    """Any one field replaced by any value: ProtocolError, or a message whose numbers are
    all finite and whose counts are not negative (``t`` and ``created``, Unix times, and
    box corners may be any finite number)."""
    msg = CASES[index]
    frames = [bytes(memoryview(f)) for f in P.encode(msg)]
    header = msgpack.unpackb(frames[1])
    key = data.draw(st.sampled_from(sorted(header)))
    header[key] = value
    frames[1] = msgpack.packb(header, use_bin_type=True)
    with contextlib.suppress(P.ProtocolError):
        back = P.decode(frames)
        h = back.header()
        for k, v in h.items():
            for number in _numbers(v):
                assert math.isfinite(number), (k, v)
                if k not in ("t", "created", "box", "tiling", "merge", "options", "model"):
                    assert number >= 0, (k, v)


def test_an_invalid_tile_still_names_itself_for_its_bad_tile_answer():
    tile = _case(P.Tile)
    frames = _frames(tile, scale=NAN)
    with pytest.raises(P.ProtocolError):
        P.decode(frames)
    assert P.tile_identity(frames) == (tile.job, tile.image, tile.index, tile.attempt)
    assert P.tile_identity(_frames(tile, index=-1)) is None  # nothing to answer for
    assert P.tile_identity([b"zv.tile", b"\xc1"]) is None
    assert P.tile_identity(_frames(_case(P.JobEnd))) is None
