"""CPU cost of ``protocol.encode`` and ``protocol.decode`` per message, for the messages
that travel per image or per tile (issue 18: many single-tile images, every role CPU-bound).

One single-tile image of a detection job costs, on the wire:

- ventilator → sink: ``ImageInfo`` (the image's announcement);
- ventilator → worker: ``Tile`` (raw pixels; ``--wire jpeg``: a JPEG, whose decode is
  Pillow's; ``--wire image``: an ``ImageWork`` instead);
- worker → ventilator: ``Ready`` (one credit per finished tile);
- worker → sink: ``Result`` (a few detections; a two-stage job's stage 1 adds points);
- sink → ventilator: ``Ack`` (batched every 0.1 s: one tile and one image, or fifty of
  each), and on the PUB for watchers ``Progress`` and the relayed ``Heartbeat``; a Pool's
  job ``Record``; a two-stage job ``Objects``.

Each message is encoded (``encode``: header, msgpack, frames) and decoded (``decode``:
frames as ``recv_multipart(copy=False)`` gives them, i.e. ``zmq.Frame`` objects) in a loop;
the figure is CPU time (``time.thread_time``, so a busy machine inflates it little) per
call in µs, the median of ``--runs`` runs of ``--loops`` calls. No socket is involved:
this is the Python cost of the wire format alone.

With ``--before COMMIT`` (default 294e020, the last commit before the fast paths) the
same messages are built and timed with that commit's ``zmqvision/protocol.py`` as well
(read with ``git show``, imported as a module of its own), and the table gives both and
the ratio. Both versions' frames are compared byte for byte on the way: a difference is
reported as an error.

    python benchmarks/protocol_cost.py                 # ~30 s on a busy 2-core machine
    python benchmarks/protocol_cost.py --runs 9 --loops 4000 --before none
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import zmq
from _common import markdown_table

from zmqvision import protocol
from zmqvision.boxes import Detections

ROOT = Path(__file__).resolve().parent.parent


def load_commit(commit: str) -> ModuleType:
    """``zmqvision/protocol.py`` as it was at ``commit``, as a module of its own."""
    src = subprocess.run(["git", "show", f"{commit}:zmqvision/protocol.py"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / f"protocol_{commit}.py"
    path.write_bytes(src)
    spec = importlib.util.spec_from_file_location(f"_zv_protocol_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def samples(p: ModuleType) -> list[tuple[str, object]]:
    """The per-image messages, built with protocol module ``p`` (same values for any)."""
    rng = np.random.default_rng(0)
    job, image, secret = "0123456789abcdef", "a1b2c3d4e5f6a7b8c9d0e1f2", "f" * 32
    path = "/tmp/p18/ssd/img_000123.jpg"

    def dets(n: int, k: int = 0) -> Detections:
        xy = rng.uniform(0, 250, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(1, 50, (n, 2))])
        lm = rng.uniform(0, 300, (n, k, 2)) if k else None
        return Detections(boxes, rng.uniform(0, 1, n).astype(np.float32),
                          rng.integers(0, 600, n).astype(np.int32), lm)

    pixels = rng.integers(0, 256, (300, 300, 3), np.uint8)
    jpeg = p.encode_jpeg(pixels)
    tile = dict(job=job, image=image, index=0, box=(0.0, 0.0, 300.0, 300.0), scale=1.0,
                model="ssd-mobilenetv2-oid", pixels=pixels, min_score=None)
    ids = [f"{i:024x}" for i in range(50)]
    beat = dict(worker="host-1234-ab12", host="host", pid=1234, device="CPU",
                model="ssd-mobilenetv2-oid", tiles_done=1000, tiles_failed=0,
                tiles_per_s=95.5, in_flight=3, queue=0, uptime=12.5, t=1.7e9, period=1.0,
                requests=3)
    return [
        ("ImageInfo", p.ImageInfo(job=job, image=image, path=path, seq=123, width=300,
                                  height=300, tiles=1, hash="b" * 32, abspath=path,
                                  secret=secret)),
        ("Tile raw 300x300", p.Tile(**tile)),
        ("Tile jpeg 300x300", p.Tile(**tile, encoding="jpeg", encoded=jpeg)),
        ("ImageWork", p.ImageWork(job=job, image=image, model="ssd-mobilenetv2-oid",
                                  width=300, height=300, boxes=((0, 0, 300, 300),),
                                  full=(False,), data=jpeg)),
        ("Ready", p.Ready(worker="host-1234-ab12", credit=1)),
        ("Result n=5", p.Result(job=job, image=image, index=0, worker="host-1234-ab12",
                                model="ssd-mobilenetv2-oid", detections=dets(5),
                                infer_ms=9.25)),
        ("Result n=0", p.Result(job=job, image=image, index=0, worker="host-1234-ab12",
                                model="ssd-mobilenetv2-oid", detections=dets(0),
                                infer_ms=9.25)),
        ("Result n=3 points", p.Result(job=job, image=image, index=0, worker="w",
                                       model="centerface", detections=dets(3, 5),
                                       infer_ms=9.25)),
        ("Heartbeat", p.Heartbeat(**beat)),
        ("Ack 1+1", p.Ack(sink="sink-1", job=job, tiles=((image, 0),), images=(image,))),
        ("Ack 50+50", p.Ack(sink="sink-1", job=job, tiles=tuple((i, 0) for i in ids),
                            images=tuple(ids))),
        ("Progress", p.Progress(job=job, images_seen=500, images_done=480, images_failed=1,
                                tiles_seen=500, tiles_done=490, elapsed=5.5, detections=2000,
                                failures=({"image": image, "path": path, "type": "DecodeError",
                                           "message": "truncated"},))),
        ("Record", p.Record(sink="sink-1", job=job, image=image,
                            json=b'{"image": "%s", "detections": []}' % image.encode())),
        ("Objects n=3", p.Objects(sink="sink-1", job=job, image=image, first=1,
                                  detections=dets(3, 5))),
    ]


def as_received(frames: list) -> list:
    """Frames as a receiving socket with copy=False hands them over: zmq.Frame each."""
    return [zmq.Frame(f if isinstance(f, bytes) else memoryview(f).tobytes())
            for f in frames]


def per_call_us(calls: list, loops: list[int], runs: int) -> list[float]:
    """CPU µs per call of each ``fn(arg)`` in ``calls`` (``loops[i]`` calls a run), the
    median over ``runs`` runs; the calls take turns within each run, so a machine that
    gets busier or quieter meanwhile moves every figure alike."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for i, (fn, arg) in enumerate(calls):
            t0 = time.thread_time()
            for _ in range(loops[i]):
                fn(arg)
            times[i].append((time.thread_time() - t0) / loops[i] * 1e6)
    return [statistics.median(t) for t in times]


def frames_bytes(frames: list) -> list[bytes]:
    return [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in frames]


def measure(modules: list[ModuleType], loops: int, runs: int) -> dict[str, list]:
    """Per message name: for each module, (encode µs, decode µs, frames as bytes)."""
    built = [dict(samples(p)) for p in modules]
    out = {}
    for name in built[0]:
        calls, counts, frames = [], [], []
        slow = "jpeg" in name or "Work" in name  # Pillow's decode: fewer loops
        for p, msgs in zip(modules, built, strict=True):
            encoded = p.encode(msgs[name])
            received = as_received(encoded)
            p.decode(received)  # a sample that does not decode is a bug here, not a figure
            calls += [(p.encode, msgs[name]), (p.decode, received)]
            counts += [loops, max(loops // 20, 50) if slow else loops]
            frames.append(frames_bytes(encoded))
        us = per_call_us(calls, counts, runs)
        out[name] = [(us[2 * i], us[2 * i + 1], frames[i]) for i in range(len(modules))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", type=int, default=2000, help="calls per run")
    ap.add_argument("--runs", type=int, default=7, help="runs per figure (median)")
    ap.add_argument("--before", default="294e020",
                    help="commit whose protocol.py to compare with ('none': only this one)")
    args = ap.parse_args()

    if args.before == "none":
        figures = measure([protocol], args.loops, args.runs)
        body = [[name, f"{e:.1f}", f"{d:.1f}"] for name, [(e, d, _)] in figures.items()]
        print(markdown_table(["message", "encode µs", "decode µs"], body))
        return
    figures = measure([load_commit(args.before), protocol], args.loops, args.runs)
    body, differ = [], []
    for name, [(e0, d0, f0), (e1, d1, f1)] in figures.items():
        if f0 != f1:
            differ.append(name)
        body.append([name, f"{e0:.1f}", f"{e1:.1f}", f"{e0 / e1:.2f}x",
                     f"{d0:.1f}", f"{d1:.1f}", f"{d0 / d1:.2f}x"])
    print(markdown_table(["message", f"encode µs {args.before}", "encode µs now", "speed-up",
                          f"decode µs {args.before}", "decode µs now", "speed-up"], body))
    print(f"\nCPU µs per call (thread time), median of {args.runs} runs of {args.loops} "
          f"calls (jpeg tile and ImageWork decode: {max(args.loops // 20, 50)}).")
    if differ:
        print(f"ERROR: frames differ from {args.before}'s for: {', '.join(differ)}")
        sys.exit(1)
    print(f"Frames of every message are byte-identical to {args.before}'s.")


if __name__ == "__main__":
    main()
