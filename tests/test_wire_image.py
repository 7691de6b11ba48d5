"""``--wire image``: records equal to raw tiles, and a real worker that answers hostile
whole-image payloads with error results and lives on (real sockets, a real model)."""

from __future__ import annotations

import io as _io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from zmqvision import protocol, sockets
from zmqvision.worker import WorkerConfig, run_worker

ROOT = Path(__file__).resolve().parents[1]
MODEL = "ssd-mobilenetv2-oid"


def _run(folder: Path, out: Path, wire: str) -> list:
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(folder), "--model",
                        MODEL, "--out", str(out), "--no-progress", "--wire", wire,
                        "--workers", "1"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                      "ZMQVISION_RESULTS_CACHE": "off"})
    assert p.returncode == 0, p.stdout + p.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    return sorted((r["image"], r["error"], r["tiles"],
                   [(d["label"], d["score"], d["box"]) for d in r["detections"]])
                  for r in recs)


@pytest.mark.timeout(300)
def test_image_wire_records_equal_raw_tiles(image_dir, tmp_path, models_ready):
    """The worker decodes and cuts exactly as the ventilator does: the same records, to
    the last digit (JPEG tiles differ slightly: tests/integration/test_pipeline.py)."""
    raw = _run(image_dir, tmp_path / "raw.jsonl", "raw")
    whole = _run(image_dir, tmp_path / "image.jsonl", "image")
    assert len(raw) == 4 and sum(len(r[3]) for r in raw) > 0
    assert whole == raw


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 30000x30000 pixels (900 megapixels)."""
    out = _io.BytesIO()
    Image.new("L", (30000, 30000)).save(out, "PNG", optimize=False, compress_level=9)
    return out.getvalue()


def _jpeg(size=(700, 500)) -> bytes:
    out = _io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(out, "JPEG")
    return out.getvalue()


@pytest.mark.timeout(120)
def test_hostile_image_payloads_give_error_results_and_the_worker_lives(models_ready):
    from zmqvision.models import resolve

    ref = resolve(MODEL).ref
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    tiles = sockets.bind(router, "tcp://127.0.0.1:0")
    pull = ctx.socket(zmq.PULL)
    results = sockets.bind(pull, "tcp://127.0.0.1:0")
    stop = sockets.StopFlag()
    worker = threading.Thread(target=run_worker, args=(WorkerConfig(
        tiles=tiles, results=results, model=MODEL, threads=1, requests=1), stop))
    worker.start()
    try:
        assert router.poll(60_000)
        wid = router.recv_multipart()[0]  # its Ready
        good = _jpeg()
        cases = {
            "bomb": (_bomb_png(), 30000, 30000, "too_large"),
            "truncated": (good[: len(good) // 2], 700, 500, None),
            "oversized": (good, 700, 500, "too_large"),  # over the job's max_pixels
            "good": (good, 700, 500, "ok"),
        }
        for name, (data, w, h, _) in cases.items():
            router.send_multipart([wid, *protocol.encode(protocol.ImageWork(
                job="j", image=name, model=ref, width=w, height=h,
                boxes=((0, 0, min(w, 300), min(h, 300)), (w - 300, h - 300, w, h)),
                full=(False, False), data=data,
                max_pixels=1000 if name == "oversized" else 100_000_000))])
        got: dict[str, list] = {}
        while sum(len(v) for v in got.values()) < 2 * len(cases):
            assert pull.poll(60_000), got
            msg = protocol.decode(pull.recv_multipart(copy=False))
            if isinstance(msg, protocol.Result):
                got.setdefault(msg.image, []).append(msg)
        for name, (_, _, _, kind) in cases.items():
            assert sorted(r.index for r in got[name]) == [0, 1]
            errors = {(r.error or {}).get("type") for r in got[name]}
            if kind == "ok":
                assert errors == {None}
            elif kind is None:
                assert None not in errors and len(errors) == 1, errors
            else:
                assert errors == {kind}, errors
        assert worker.is_alive()
    finally:
        stop.set()
        worker.join(30)
        router.close(0)
        pull.close(0)
        ctx.term()
    assert not worker.is_alive()


def _big_jpeg(size=(8000, 6000)) -> bytes:
    """A large photo-like JPEG (the example photo scaled up): a decode of a good part of
    a second here, which is what a worker must not spend with its loop blocked."""
    photo = Image.open(ROOT / "examples" / "images" / "astronaut.jpg").convert("RGB")
    out = _io.BytesIO()
    photo.resize(size).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.timeout(180)
def test_a_worker_decoding_whole_images_keeps_heartbeating(models_ready):
    """Whole images are decoded off the worker's loop: while it decodes several large
    images (sent together, as a ventilator with credit would), it goes on heartbeating
    to the ventilator, so a busy worker is never taken for a dead one (three periods of
    silence) and its finished tiles' results and credit are not held up by a decode."""
    import time

    from zmqvision import io
    from zmqvision.models import resolve

    ref = resolve(MODEL).ref
    data = _big_jpeg()
    started = time.monotonic()
    io.decode_image(data, max_pixels=100_000_000, name="probe")
    decode_s = time.monotonic() - started
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    tiles = sockets.bind(router, "tcp://127.0.0.1:0")
    pull = ctx.socket(zmq.PULL)
    results = sockets.bind(pull, "tcp://127.0.0.1:0")
    stop = sockets.StopFlag()
    period = 0.2
    worker = threading.Thread(target=run_worker, args=(WorkerConfig(
        tiles=tiles, results=results, model=MODEL, threads=1, requests=1,
        heartbeat_s=period), stop))
    worker.start()
    try:
        assert router.poll(60_000)
        wid = router.recv_multipart()[0]
        n = 4
        for i in range(n):
            router.send_multipart([wid, *protocol.encode(protocol.ImageWork(
                job="j", image=f"big{i}", model=ref, width=8000, height=6000,
                boxes=((0, 0, 300, 300),), full=(False,), data=data,
                max_pixels=100_000_000))])
        beats, answered = [], set()
        deadline = time.monotonic() + 120
        while len(answered) < n:
            assert time.monotonic() < deadline, (answered, beats)
            while router.poll(0):
                msg = protocol.decode(router.recv_multipart()[1:])
                if isinstance(msg, protocol.Heartbeat):
                    beats.append(time.monotonic())
            if pull.poll(20):
                msg = protocol.decode(pull.recv_multipart(copy=False))
                if isinstance(msg, protocol.Result):
                    assert msg.error is None, msg.error
                    answered.add(msg.image)
        gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
        # Decoding in the loop stalls it for all n decodes at once (n * decode_s).
        assert gaps and max(gaps) < max(1.0, 1.5 * decode_s), (max(gaps), decode_s, gaps)
    finally:
        stop.set()
        worker.join(30)
        router.close(0)
        pull.close(0)
        ctx.term()
    assert not worker.is_alive()
