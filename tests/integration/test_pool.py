"""zmqvision.Pool with real sockets, real sink and worker processes, real OpenVINO.

Records from the Pool must equal `zmqvision run`'s for the same image; many threads and
asyncio tasks share one pool; cancelled and timed-out requests leave nothing behind; a
small request is not queued behind a large job; a pool joins a running cluster."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXAMPLES, PHOTOS
from zmqvision import results

pytestmark = pytest.mark.slow

MODEL = "blazeface-short"  # 128x128, about a millisecond an inference: many requests fast
SAME = ("width", "height", "model", "detections", "error", "hash", "tiles", "settings")


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> list[Path]:
    """48 distinct PNGs of 100-200 px, crops of the example photos (one tile each)."""
    d = tmp_path_factory.mktemp("small")
    photos = [Image.open(EXAMPLES / p).convert("RGB") for p in PHOTOS]
    rng = np.random.default_rng(7)
    paths = []
    for i in range(48):
        im = photos[i % 4]
        w, h = (int(v) for v in rng.integers(100, 200, 2))
        x, y = int(rng.integers(0, im.width - w)), int(rng.integers(0, im.height - h))
        p = d / f"s{i:02d}.png"
        im.crop((x, y, x + w, y + h)).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def reference(small_images, tmp_path_factory, models_ready) -> dict[str, dict]:
    """`zmqvision run`'s records of the small images, by file name."""
    from zmqvision.run import RunPlan, run_job
    from zmqvision.sink import SinkConfig
    from zmqvision.ventilator import VentilateConfig
    from zmqvision.worker import WorkerConfig

    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    run_job(RunPlan(job=VentilateConfig(inputs=(str(small_images[0].parent),), model=MODEL,
                                        cache=None),
                    sink=SinkConfig(out=str(out), events="tcp://127.0.0.1:0", cache=None),
                    worker=WorkerConfig(model=MODEL)))
    recs = {Path(r["image"]).name: r for r in results.read_jsonl(out)}
    assert len(recs) == len(small_images)
    assert sum(len(r["detections"]) for r in recs.values()) > 0  # faces among the crops
    return recs


@pytest.fixture(scope="module")
def pool(models_ready):
    from zmqvision import Pool

    with Pool(model=MODEL, cache=None) as p:
        yield p


def _same_as_run(record: dict, ref: dict) -> None:
    assert {k: record[k] for k in SAME} == {k: ref[k] for k in SAME}


@pytest.mark.timeout(240)
def test_a_thousand_submits_from_16_threads_equal_run(pool, small_images, reference):
    n = 1000

    def one(i: int) -> tuple[Path, dict]:
        path = small_images[i % len(small_images)]
        # Paths and encoded bytes: the same bytes, the same record as the file's.
        image = path if i % 2 else path.read_bytes()
        return path, pool.submit(image, timeout=120).result(timeout=180)

    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(one, range(n)))
    assert len(got) == n
    ids = set()
    for path, rec in got:
        _same_as_run(rec, reference[path.name])
        ids.add(rec["id"])
    assert len(ids) == n  # every request its own image, even the same bytes twice
    assert not pool.engine.window


@pytest.mark.timeout(240)
def test_a_thousand_awaits_from_100_asyncio_tasks_equal_run(pool, small_images, reference):
    arrays = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in small_images}

    async def task(t: int) -> list[tuple[str, dict]]:
        out = []
        for k in range(10):
            path = small_images[(t * 10 + k) % len(small_images)]
            image = arrays[path.name] if k % 3 == 0 else str(path)
            out.append((path.name, await pool.detect(image, timeout=120)))
        return out

    async def main() -> list:
        return await asyncio.gather(*(task(t) for t in range(100)))

    got = [item for chunk in asyncio.run(main()) for item in chunk]
    assert len(got) == 1000
    for name, rec in got:
        ref = reference[name]
        if rec["hash"].startswith("blake2b-rgb:"):  # an array: no file bytes to hash
            same = [k for k in SAME if k != "hash"]
            assert {k: rec[k] for k in same} == {k: ref[k] for k in same}
        else:
            _same_as_run(rec, ref)


@pytest.mark.timeout(120)
def test_bad_inputs_get_error_records_and_the_pool_goes_on(pool, small_images):
    recs = {name: pool.submit(image, name=name).result(timeout=60) for name, image in [
        ("garbage", b"not an image at all"),
        ("truncated", small_images[0].read_bytes()[:200]),
        ("missing", "/nonexistent/x.png"),
        ("float-array", np.zeros((50, 50, 3), np.float32)),
        ("object", object()),
        ("good", small_images[1]),
    ]}
    assert recs["garbage"]["error"]["type"] == "unsupported_format"
    assert recs["truncated"]["error"]["type"] == "corrupt_image"
    assert recs["missing"]["error"]["type"] == "not_found"
    assert recs["float-array"]["error"]["type"] == "unsupported_format"
    assert recs["object"]["error"]["type"] == "unsupported_format"
    assert recs["good"]["error"] is None
    assert all(r["image"] == name for name, r in recs.items())


def _big(tmp: Path) -> Path:
    """One 3200x2400 photo: about 800 tiles of 128 px (a second or more of inference), so
    requests queue up and a deadline of 0.1 s always passes first."""
    p = tmp / "big.jpg"
    Image.open(EXAMPLES / PHOTOS[0]).convert("RGB").resize((3200, 2400)).save(p, quality=90)
    return p


def _settled(pool, timeout: float = 30.0) -> bool:
    """Nothing in flight, nothing leased, nothing queued to send again."""
    deadline = time.monotonic() + timeout
    e = pool.engine
    while time.monotonic() < deadline:
        if not e.window and not e.dispatch.leases and not e.dispatch.resend:
            return True
        time.sleep(0.05)
    return False


def _decoders_idle(pool) -> None:
    """Wait until every decode thread has finished what it was given: a withdrawn request
    may still be being decoded (a 23 MB photo), which RSS would count. One barrier task per
    thread, queued behind the rest, meets only when each thread has run out of work."""
    import threading

    n = pool.decoder._max_workers
    barrier = threading.Barrier(n + 1)
    for _ in range(n):
        pool.decoder.submit(barrier.wait, 30)
    barrier.wait(30)


def _rss_mb() -> float:
    """This process's resident memory (the pool's engine runs here), after giving freed
    memory back to the OS: glibc keeps freed image buffers in its arenas otherwise."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.timeout(240)
def test_cancelled_and_timed_out_requests_leave_nothing(pool, tmp_path):
    big = _big(tmp_path)
    rss = []
    for _ in range(5):
        futures = [pool.submit(big) for _ in range(20)]
        # Wait until the first is being worked on (tiles leased), then cancel them all.
        deadline = time.monotonic() + 30
        while not pool.engine.dispatch.leases and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.engine.dispatch.leases, "no tile was ever sent"
        cancelled = sum(f.cancel() for f in futures)
        assert cancelled >= 19  # the first may have finished meanwhile
        assert _settled(pool), "cancelled requests left images, leases or re-sends behind"
        for f in futures:
            if f.cancelled():
                with pytest.raises(CancelledError):
                    f.result(0)
        timed = [pool.submit(big, timeout=0.1) for _ in range(5)]
        from zmqvision.engine import RequestTimeout

        for f in timed:
            with pytest.raises(RequestTimeout):
                f.result(timeout=30)
        assert _settled(pool), "timed-out requests left images, leases or re-sends behind"
        del futures, timed, f
        _decoders_idle(pool)
        rss.append(_rss_mb())
    # The pool still answers, and memory did not grow with the withdrawn requests.
    assert pool.submit(EXAMPLES / PHOTOS[1]).result(timeout=60)["error"] is None
    assert rss[-1] - rss[1] < 30, f"RSS grew {rss} MiB"


@pytest.mark.timeout(240)
def test_one_image_is_not_queued_behind_a_2000_image_job(pool, small_images):
    records = []
    started = threading.Event()

    def big_job() -> None:
        for rec in pool.map(small_images[i % len(small_images)] for i in range(2000)):
            records.append(rec)
            started.set()

    job = threading.Thread(target=big_job)
    job.start()
    try:
        assert started.wait(60)
        t0 = time.monotonic()
        rec = pool.submit(EXAMPLES / PHOTOS[0]).result(timeout=30)
        latency = time.monotonic() - t0
        still_running = len(records) < 2000
    finally:
        job.join(180)
    assert rec["error"] is None
    assert still_running, "the large job ended before the small request: nothing was shown"
    assert latency < 2.0, f"a one-image request took {latency:.2f} s beside the large job"
    assert len(records) == 2000 and all(r["error"] is None for r in records)


@pytest.mark.timeout(180)
def test_pool_connects_to_a_running_sink_and_workers(tmp_path, models_ready, small_images):
    """The cluster of the commands: `zmqvision sink` and `zmqvision worker` processes; the
    pool binds tiles where the worker connects, and gets records from the sink."""
    from zmqvision import Pool, sockets
    from zmqvision.embedded import Child, stop_children, wait_children

    stop = sockets.StopFlag()
    sink = Child(["sink", "--out", str(tmp_path / "r.jsonl"), "--bind-results",
                  "tcp://127.0.0.1:0", "--bind-events", "tcp://127.0.0.1:0", "--no-cache"],
                 log_level=30)
    children = [sink]
    try:
        wait_children([sink], stop, 60)
        with Pool.connect(sink=sink.ready["results"], events=sink.ready["events"],
                          tiles="tcp://127.0.0.1:0", model=MODEL, cache=None) as pool:
            children.append(Child(["worker", "--model", MODEL, "--tiles", pool.tiles_endpoint,
                                   "--results", sink.ready["results"]], log_level=30))
            wait_children(children[1:], stop, 60)
            recs = list(pool.map(small_images[:10]))
        assert len(recs) == 10 and all(r["error"] is None for r in recs)
        # Published back, not written: the sink's results file has none of them.
        out = tmp_path / "r.jsonl"
        assert not out.exists() or not list(results.read_jsonl(out))
    finally:
        stop_children(children)


@pytest.mark.timeout(180)
def test_the_readme_pool_example_runs(models_ready):
    """examples/pool.py, which README's Python API section points to, runs as written."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    p = subprocess.run([sys.executable, str(ROOT / "examples" / "pool.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "records from 8 threads" in p.stdout and "timed out as asked" in p.stdout
