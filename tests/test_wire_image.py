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
        tiles=tiles, results=results, model=MODEL, threads=1, requests=4), stop))
    worker.start()
    try:
        assert router.poll(60_000)
        wid = router.recv_multipart()[0]  # its Ready: 4 tiles, each image needs 1
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


def _ventilator_and_worker_cuts(path: Path, plan) -> tuple[list, list]:
    """Each tile of ``path`` as the ventilator cuts it when a tile goes again (its file read
    anew, ``Engine._reread``, then ``_TileMaker``) and as a worker cuts it from the
    ``ImageWork`` the ventilator would send (``Engine._send_image``, ``ImageCutter``)."""
    from zmqvision import io
    from zmqvision.engine import _TileMaker
    from zmqvision.inputs import load_frame
    from zmqvision.worker.images import ImageCutter

    settings = plan.settings
    loaded = load_frame(str(path), 0, settings.max_pixels, reduce=plan.reducer(),
                        max_bytes=settings.max_file_bytes)
    image = loaded.image
    info = protocol.ImageInfo(job="j", image="i", path=str(path), seq=0, hash=loaded.hash,
                              width=image.width, height=image.height)
    tiles = plan.tiles(image.width, image.height)
    ventilator = [_TileMaker(info, plan, image.pixels, t, image.reduced, 1, "raw")()
                  for t in tiles]
    reducer = plan.reducer()
    draft = int(reducer(image.width, image.height)) if reducer is not None else 1
    work = protocol.ImageWork(
        job="j", image="i", model=plan.model_ref, width=image.width, height=image.height,
        boxes=tuple(tuple(int(v) for v in t.box) for t in tiles),
        full=tuple(bool(t.full) for t in tiles), data=io.read_file(str(path)), attempt=0,
        min_score=settings.score_threshold, max_pixels=settings.max_pixels,
        draft=draft if draft in (2, 4, 8) else 1, task=plan.tile_request)
    cut, errors = ImageCutter(plan.task, plan.spec.input_size, plan.model_ref,
                              "w").tiles(work)
    assert not errors, errors
    return ventilator, cut


@pytest.mark.parametrize("model", [MODEL, "centerface", "efficientnet-lite0"])
def test_a_workers_cut_of_a_whole_image_equals_the_ventilators_cut_of_each_tile(
        tmp_path, model, models_ready):
    """A whole image's tiles may be answered partly by its image worker's own cut and
    partly by raw tiles the ventilator cuts again (its worker died): the two cuts must be
    the same pixels, or the record depends on which tiles came from where. Sizes whose
    JPEG the plan reduces as it decodes (draft 2, 4) and sizes it does not."""
    from zmqvision.plan import JobPlan, JobSettings

    photo = Image.open(ROOT / "examples" / "images" / "astronaut.jpg").convert("RGB")
    for size in ((1600, 1200), (1203, 907), (4000, 3000), (640, 480)):
        path = tmp_path / f"{model}-{size[0]}.jpg"
        photo.resize(size).save(path, quality=90)
        # tiles twice the model's input: every one shrinks by 2 (a JPEG draft of 2 or 4)
        for tile_size in (None, (600, 600)) if model == MODEL else (None,):
            plan = JobPlan(JobSettings(model=model, tile_size=tile_size))
            ventilator, worker = _ventilator_and_worker_cuts(path, plan)
            assert len(ventilator) == len(worker) > 0
            for v, w in zip(ventilator, worker, strict=True):
                assert (v.index, v.box, v.scale) == (w.index, w.box, w.scale), (size, v.index)
                assert np.array_equal(np.asarray(v.pixels), np.asarray(w.pixels)), (
                    model, size, tile_size, v.index)


def _outside_address() -> str | None:
    """This host's address on a non-loopback interface (no packet is sent), or None."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route's source address
        addr = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") else addr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("images", [1, 2])
def test_auto_an_image_worker_never_gets_jpeg_tiles_of_an_image_a_raw_worker_began(
        tmp_path, images, models_ready):
    """``--wire auto``: a local worker (raw tiles) takes the first tile of an image, so the
    image can no longer go whole; then the worker on another host (whole images) asks.
    It gets the job's next image whole, admitted for it; with no other image, the begun
    image's other tiles, raw, cut from the same pixels as the local worker's. JPEG tiles
    (for images that can never go whole) give slightly other detections, so the record
    would differ from a raw run's, depending on which worker asked first
    (tests/integration/test_wire_image_faults.py failed so)."""
    import contextlib

    from tests.conftest import wait_until
    from tests.test_engine import hello
    from zmqvision.engine import JobFailed
    from zmqvision.models import resolve
    from zmqvision.plan import JobPlan, JobSettings
    from zmqvision.pool import Pool
    from zmqvision.ventilator import VentilateConfig

    outside = _outside_address()
    if outside is None:
        pytest.skip("no non-loopback address to reach the ventilator from 'another host'")
    paths = [tmp_path / f"photo{i}.jpg" for i in range(images)]
    for i, path in enumerate(paths):
        Image.open(ROOT / "examples" / "images" / "astronaut.jpg").convert("RGB").resize(
            (1600, 1200)).rotate(i * 11).save(path, quality=90)
    ctx = zmq.Context()
    pull, pub = ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
    results, events = f"ipc://{tmp_path}/results", f"ipc://{tmp_path}/events"
    pull.bind(results)
    pub.bind(events)
    pool = Pool.connect(tiles="tcp://0.0.0.0:0", sink=results, events=events, model=MODEL,
                        cache=None, insecure=True, wire="auto")
    port = pool.tiles_endpoint.rsplit(":", 1)[1]
    config = VentilateConfig(inputs=tuple(map(str, paths)), model=MODEL, cache=None,
                             tiles=pool.tiles_endpoint, sink=results, events=events)
    stop = sockets.StopFlag()

    def run() -> None:
        with contextlib.suppress(JobFailed):
            pool.run_files(config, stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    dealers = []

    def worker(wid: str, host: str, credit: int) -> zmq.Socket:
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.ROUTING_ID, wid.encode())
        d.connect(f"tcp://{host}:{port}")
        hello(d, wid, credit, resolve(MODEL).ref)
        dealers.append(d)
        return d

    def take(d: zmq.Socket, n: int) -> list:
        got = []
        while len(got) < n:
            assert d.poll(20_000), got
            got.append(protocol.decode(d.recv_multipart(copy=False)))
        return got

    try:
        while True:  # the image is announced: admitted, its tiles waiting for a worker
            assert pull.poll(30_000)
            if isinstance(protocol.decode(pull.recv_multipart(copy=False)),
                          protocol.ImageInfo):
                break
        first = take(worker("local-w", "127.0.0.1", 1), 1)[0]
        assert isinstance(first, protocol.Tile) and first.encoding == "raw"
        # Every input read and decoded (the reader's loads done), so that the second image
        # is there to admit when the remote worker asks (read from this thread: a peek).
        wait_until(lambda: all(f.done() for j in list(pool.engine.jobs.values())
                               for f in list(j.reader._pending)), 30, "inputs decoded")
        remote = worker("remote-w", outside, 3)
        if images == 2:
            whole = take(remote, 1)[0]
            assert isinstance(whole, protocol.ImageWork) and whole.image != first.image
            return
        rest = take(remote, 3)
        assert all(isinstance(t, protocol.Tile) for t in rest), rest
        assert [t.encoding for t in rest] == ["raw"] * 3
        plan = JobPlan(JobSettings(model=MODEL))
        ventilator, _ = _ventilator_and_worker_cuts(paths[0], plan)
        for t in (first, *rest):
            assert np.array_equal(np.asarray(t.pixels), np.asarray(ventilator[t.index].pixels))
    finally:
        stop.set()
        thread.join(20)
        pool.close()
        for s in (*dealers, pull, pub):
            s.close(linger=0)
        ctx.term()
