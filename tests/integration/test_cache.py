"""The result cache in the real pipeline: real processes, sockets, models, SQLite files and
``redis-server`` processes (tests/redis_servers.py). A hit must never reach a worker (the
workers' own tile counters, from their heartbeats, do not move) and must give the record
inference gave, apart from ``job`` and ``cached``.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, ipc, wait_event, wait_progress, wait_until
from tests.redis_servers import RedisServer
from tests.slow_worker import hold
from zmqvision import protocol

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SUMMARY = re.compile(r"(\d+) images, (\d+) failed, (\d+) cached, (\d+) tiles")


def summary(log: str) -> tuple[int, int, int, int]:
    m = SUMMARY.search(log)
    assert m, log
    return tuple(int(g) for g in m.groups())


def worker_tiles(events: str, timeout: float = 15.0) -> int:
    """The worker's cumulative tiles_done from a heartbeat sent after this call."""
    after = time.time()
    beat = wait_event(events, protocol.MsgType.HEARTBEAT, lambda b: b.t > after, timeout,
                      what="heartbeat")
    return beat.tiles_done


def records(path) -> dict[str, list[dict]]:
    """Records per job, each job's sorted by path."""
    jobs: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            jobs.setdefault(rec["job"], []).append(rec)
    return {j: sorted(v, key=lambda r: r["image"]) for j, v in jobs.items()}


def without(rec: dict, *keys: str) -> dict:
    return {k: v for k, v in rec.items() if k not in keys}


class Pipeline:
    """A sink and one worker that outlive several jobs (so the worker's counters span
    them), and ventilators started one job at a time, all with the same cache."""

    def __init__(self, procs, tmp_path, cache: str, *worker_args: str,
                 model: str = "centerface", hold_ms: float = 0) -> None:
        self.procs, self.cache, self.model = procs, cache, model
        self.tiles = ipc(tmp_path, "tiles")  # the same for every job's ventilator
        self.out = tmp_path / "out.jsonl"
        self.sink, self.results, self.events = procs.sink(self.out, "--cache", cache)
        self.worker = procs.start("worker", "--model", model, "--tiles", self.tiles,
                                  "--results", self.results, "--threads", "1", *worker_args,
                                  name="worker", **(hold(hold_ms) if hold_ms else {}))

    def start(self, *inputs) -> subprocess.Popen:
        return self.procs.start("ventilate", *map(str, inputs), "--model", self.model,
                                "--bind", self.tiles, "--sink-results", self.results,
                                "--sink-events", self.events, "--no-progress",
                                "--cache", self.cache, "-v", name="ventilate")

    def ventilate(self, *inputs) -> str:
        v = self.start(*inputs)
        assert self.procs.wait(v, 240) == 0, self.procs.log(v)
        return self.procs.log(v)


def second_run_infers_nothing(pipe: Pipeline, image_dir, tmp_path) -> None:
    first = summary(pipe.ventilate(image_dir))
    assert first[:3] == (4, 0, 0) and first[3] >= 4
    tiles = worker_tiles(pipe.events)
    assert tiles == first[3]

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(image_dir / "astronaut.jpg", renamed / "same-bytes.jpg")
    assert summary(pipe.ventilate(image_dir, renamed)) == (5, 0, 5, 0)
    assert worker_tiles(pipe.events) == tiles  # not one tile inferred for the second job

    jobs = sorted(records(pipe.out).values(), key=len)
    assert [len(v) for v in jobs] == [4, 5]
    one, two = jobs
    by_path = {r["image"]: r for r in two}
    copy = by_path.pop(str(renamed / "same-bytes.jpg"))
    assert all(r["cached"] is False for r in one)
    assert all(r["cached"] is True for r in two)
    assert [without(r, "job", "cached") for r in one] == \
           [without(by_path[r["image"]], "job", "cached") for r in one]
    astronaut = next(r for r in one if r["image"].endswith("astronaut.jpg"))
    assert copy["detections"] == astronaut["detections"] and copy["detections"]
    assert copy["hash"] == astronaut["hash"] and copy["id"] != astronaut["id"]


def test_sqlite_second_run_infers_nothing_and_gives_the_same_records(
        image_dir, tmp_path, procs, models_ready):
    url = f"sqlite://{tmp_path}/cache.sqlite3"
    second_run_infers_nothing(Pipeline(procs, tmp_path, url), image_dir, tmp_path)


def test_redis_second_run_infers_nothing_and_gives_the_same_records(
        redis_server, image_dir, tmp_path, procs, models_ready):
    second_run_infers_nothing(Pipeline(procs, tmp_path, redis_server.url), image_dir,
                              tmp_path)


def distinct_images(folder, photos, n: int, side: int = 0):
    """``n`` images with different bytes: crops of the example photos (or, with ``side``,
    small noise images)."""
    from PIL import Image

    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        if side:
            im = Image.fromarray(rng.integers(0, 255, (side, side, 3), np.uint8))
        else:
            src = Image.open(photos[i % len(photos)]).convert("RGB")
            k = i // len(photos)
            im = src.crop((4 * k, 4 * k, src.width - 4 * k, src.height - 4 * k))
        im.save(folder / f"img{i:03d}.jpg", quality=90)
    return folder


def test_redis_killed_mid_job_the_job_completes_and_the_cache_comes_back(
        redis_server, tmp_path, procs, photos, models_ready):
    import redis

    folder = distinct_images(tmp_path / "twelve", photos, 12)
    # One request, each result held 250 ms: the job lasts a few seconds.
    pipe = Pipeline(procs, tmp_path, redis_server.url, "--requests", "1", hold_ms=250)
    vent = pipe.start(folder)
    before_kill = wait_progress(pipe.events, 2, field="images_done", timeout=120).images_done
    redis_server.kill()
    assert procs.wait(vent, 240) == 0, procs.log(vent)
    log = procs.log(vent)
    assert summary(log)[:2] == (12, 0)
    assert log.count("is not usable") == 1, log  # one clear warning, then quiet
    (recs,) = records(pipe.out).values()
    assert len(recs) == 12 and all(r["error"] is None for r in recs)

    # Redis is back, empty (it kept nothing on disk): the saves that waited in the sink
    # while it was gone reach it; only those it had before it died are lost.
    back = RedisServer(redis_server.workdir, port=redis_server.port).start()
    try:
        client = redis.Redis(port=back.port)
        # The sink says it is back after the first write that succeeds: the one batch of
        # every save that waited (the job is over, nothing else is queued).
        wait_until(lambda: "is back" in procs.log(pipe.sink), 60, "the sink's saves",
                   alive=lambda: pipe.sink.poll() is None)
        saved = client.dbsize()
        client.close()
        assert saved >= 12 - before_kill - 2, (saved, before_kill, procs.log(pipe.sink))
        assert procs.log(pipe.sink).count("is not usable") == 1
        tiles = worker_tiles(pipe.events)
        assert summary(pipe.ventilate(folder)) == (12, 0, saved, 12 - saved)
        assert worker_tiles(pipe.events) == tiles + 12 - saved
    finally:
        back.stop()


def test_redis_cluster_spreads_entries_over_its_nodes_and_hits(
        redis_cluster, tmp_path, photos, models_ready):
    import redis

    folder = distinct_images(tmp_path / "thirty", photos, 30, side=64)
    url = f"redis+cluster://127.0.0.1:{redis_cluster[0].port}"

    def run() -> tuple[int, int, int, int]:
        p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(folder), "--out",
                            str(tmp_path / "out.jsonl"), "--no-progress", "--events",
                            "tcp://127.0.0.1:0", "--cache", url],
                           cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert p.returncode == 0, p.stdout + p.stderr
        return summary(p.stdout)

    assert run()[:3] == (30, 0, 0)
    sizes = []
    for node in redis_cluster:
        client = redis.Redis(port=node.port)
        sizes.append(client.dbsize())
        client.close()
    assert sum(sizes) == 30 and all(sizes), sizes  # every master holds some
    assert run() == (30, 0, 30, 0)


def test_two_jobs_at_once_over_overlapping_folders_share_the_sqlite_cache(
        tmp_path, photos, procs, monkeypatch, models_ready):
    db = tmp_path / "shared.sqlite3"
    # The default cache, named by the environment as a user or a farm would.
    monkeypatch.setenv("ZMQVISION_RESULTS_CACHE", f"sqlite://{db}")
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, chosen in ((a, photos[:3]), (b, photos[1:])):
        folder.mkdir()
        for p in chosen:
            shutil.copy(p, folder / p.name)
    runs = [procs.start("run", str(f), "--out", str(tmp_path / f"{f.name}.jsonl"),
                        "--no-progress", "--events", "tcp://127.0.0.1:0", name=f"run-{f.name}")
            for f in (a, b)]
    for r in runs:
        assert procs.wait(r, 240) == 0, procs.log(r)
        assert summary(procs.log(r))[:2] == (3, 0)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone() == (4,)
    conn.close()
    both = procs.start("run", str(a), str(b), "--out", str(tmp_path / "both.jsonl"),
                       "--no-progress", "--events", "tcp://127.0.0.1:0", name="run-both")
    assert procs.wait(both, 240) == 0, procs.log(both)
    assert summary(procs.log(both)) == (6, 0, 6, 0)


def test_run_starts_workers_only_for_images_the_cache_lacks(image_dir, tmp_path,
                                                             models_ready):
    """`zmqvision run`: all cached, no worker starts (no model is loaded); one new image
    among cached ones, the workers start when the ventilator reaches it."""
    cache = f"sqlite:///{tmp_path / 'c.sqlite'}"

    def run(*inputs: str) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "zmqvision", "run", *inputs, "--cache",
                            cache, "--out", str(tmp_path / "r.jsonl"), "--no-progress",
                            "--events", "tcp://127.0.0.1:0", "-v"],
                           capture_output=True, text=True, timeout=240, cwd=ROOT)
        assert p.returncode == 0, p.stdout + p.stderr
        return p

    first = run(str(image_dir))
    assert summary(first.stdout)[:3] == (4, 0, 0)
    assert "worker local-" in first.stderr  # the worker's ready line

    again = run(str(image_dir))
    assert summary(again.stdout)[2:] == (4, 0)
    assert "worker local-" not in again.stderr, "no worker for a job the cache answers"
    assert "the sink runs as a thread" in again.stderr  # and no sink process either
    assert len(records(tmp_path / "r.jsonl")) == 1  # one job in the file: --out rewritten

    extra = tmp_path / "extra"
    shutil.copytree(image_dir, extra)
    # Other bytes (a byte after the JPEG's end marker), the same picture.
    (extra / "zz-new.jpg").write_bytes((image_dir / "astronaut.jpg").read_bytes() + b"\0")
    mixed = run(str(extra))
    images, failed, cached, tiles = summary(mixed.stdout)
    assert (images, failed, cached) == (5, 0, 4) and tiles >= 1
    assert "worker local-" in mixed.stderr
    (job,) = records(tmp_path / "r.jsonl").values()
    assert [r["cached"] for r in job] == [True] * 4 + [False]  # zz-new.jpg sorts last
    assert job[4]["detections"] and job[4]["error"] is None
