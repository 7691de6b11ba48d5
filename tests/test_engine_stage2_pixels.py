"""The ventilator keeps a two-stage job's decoded pixels from its stage-1 tiles until the
sink's ``zv.objects`` comes, and cuts the crops from them: no second read and decode of
the file (``Engine.rereads``, ``Engine.crop_rereads`` stay 0), within a byte budget
(``Engine.stage2_pixels_bytes``). Past the budget the crops are cut from the file read
again, and are the same. The held bytes (``Engine.held_bytes``) go back to 0 once the
crops are cut, and also when the image fails or the job is stopped.

Against a sink and a worker played here (real sockets, ``tests/test_engine.FakeSink``),
and end to end (``run --model plates``'s pool, in one process)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import zmq
from PIL import Image

from tests.test_engine import FakeSink, hello
from zmqvision import protocol, sockets
from zmqvision.boxes import Detections

pytestmark = pytest.mark.timeout(300)

SIZE = (1000, 700)  # 2 x 2 plate tiles of 640; 2.1 MB of pixels


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.01)


@pytest.fixture
def picture(tmp_path):
    from tests.test_plates_samples import photo

    pixels = np.asarray(photo("coffee", SIZE).convert("RGB"))
    path = tmp_path / "scene.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


class TwoStageJob:
    """A ``--model plates`` file job of one image on a Pool, with the sink and one worker
    played by the test."""

    def __init__(self, tmp_path, path, budget: int | None) -> None:
        from zmqvision.pool import Pool
        from zmqvision.ventilator import VentilateConfig

        self.sink = FakeSink(tmp_path)
        self.ctx = zmq.Context()
        self.config = VentilateConfig(inputs=(str(path),), model="plates-det", stage2="plates",
                                      cache=None, tiles=f"ipc://{tmp_path}/tiles",
                                      sink=self.sink.results, events=self.sink.events)
        self.pool = Pool.connect(tiles=self.config.tiles, sink=self.sink.results,
                                 events=self.sink.events, model="plates-det", cache=None)
        if budget is not None:
            self.pool.engine.stage2_pixels_bytes = budget
        self.stop = sockets.StopFlag()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.sink.heard_by(self.pool)
        self.start = self.sink.next(protocol.JobStart)
        self.info = self.sink.next(protocol.ImageInfo)
        self.worker = self.ctx.socket(zmq.DEALER)
        self.worker.linger = 0
        self.worker.setsockopt(zmq.ROUTING_ID, b"w1")
        self.worker.connect(self.config.tiles)
        plan = self.pool.plan(replace(self.pool.defaults, stage2="plates"))
        hello(self.worker, "w1", 100, plan.model_ref, plan.stage2.model)

    def _run(self) -> None:
        from zmqvision.engine import JobFailed

        with contextlib.suppress(JobFailed):
            self.pool.run_files(self.config, self.stop)

    @property
    def engine(self):
        return self.pool.engine

    def tiles(self, n: int, timeout: float = 20.0) -> list[protocol.Tile]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            if self.worker.poll(100):
                got.append(protocol.decode(self.worker.recv_multipart(copy=False)))
        assert len(got) == n, f"{len(got)} of {n} tiles"
        return got

    def publish(self, msg) -> None:
        self.sink.publish(msg)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        self.pool.close()
        self.worker.close(0)
        self.ctx.term()
        self.sink.close()


@pytest.fixture
def job_with(tmp_path, picture, models_ready):
    made = []

    def make(budget: int | None = None) -> TwoStageJob:
        made.append(TwoStageJob(tmp_path, picture[0], budget))
        return made[-1]

    yield make
    for j in made:
        j.close()


def two_plates() -> Detections:
    corners = np.array([[[100, 100], [260, 110], [258, 160], [98, 150]],
                        [[600, 400], [800, 400], [800, 460], [600, 460]]], np.float64)
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    return Detections.of(boxes, [0.9, 0.8], [0, 0], corners)


def expected_crops(pixels: np.ndarray, objects: Detections) -> list[np.ndarray]:
    """The crops the reference cuts from the original image (``plate_crops``)."""
    from zmqvision.tasks import stage2

    return stage2.crops(stage2.plan("plates", "plates-det"), pixels, objects)


def crops_after_objects(job: TwoStageJob, objects: Detections) -> list[protocol.Tile]:
    n = job.info.tiles
    job.publish(protocol.Objects(sink="s1", job=job.start.job, image=job.info.image, first=n,
                                 detections=objects))
    crops = sorted(job.tiles(len(objects)), key=lambda t: t.index)
    assert [t.index for t in crops] == list(range(n, n + len(objects)))
    assert all(t.task == {"stage": 2} and t.encoding == "raw" for t in crops)
    return crops


def test_crops_are_cut_from_the_pixels_kept_no_second_decode(job_with, picture):
    _, pixels = picture
    job = job_with()
    assert job.info.tiles > 1
    job.tiles(job.info.tiles)  # every stage-1 tile out: the pixels stay, for the crops
    wait_for(lambda: job.engine.held_bytes == pixels.nbytes, 10, "pixels held")
    objects = two_plates()
    crops = crops_after_objects(job, objects)
    for tile, want in zip(crops, expected_crops(pixels, objects), strict=True):
        assert tile.pixels.dtype == want.dtype and tile.pixels.tobytes() == want.tobytes()
    assert job.engine.rereads == 0 and job.engine.crop_rereads == 0  # no second decode
    wait_for(lambda: job.engine.held_bytes == 0, 10, "pixels released once cut")


def test_past_the_budget_the_file_is_read_again_and_the_crops_are_the_same(job_with,
                                                                           picture):
    _, pixels = picture
    job = job_with(budget=pixels.nbytes - 1)
    job.tiles(job.info.tiles)
    objects = two_plates()
    crops = crops_after_objects(job, objects)
    for tile, want in zip(crops, expected_crops(pixels, objects), strict=True):
        assert tile.pixels.tobytes() == want.tobytes()
    assert job.engine.crop_rereads == 1 and job.engine.rereads == 1
    assert job.engine.held_bytes == 0


def test_a_failed_image_and_a_stopped_job_release_the_pixels(job_with, picture):
    """The sink wrote the image's record as an error (a stage-1 tile failed: no objects
    come, only the ack): its pixels go. And a job stopped with pixels held leaves none."""
    _, pixels = picture
    job = job_with()
    job.tiles(job.info.tiles)
    wait_for(lambda: job.engine.held_bytes == pixels.nbytes, 10, "pixels held")
    job.publish(protocol.Ack(sink="s1", job=job.start.job, images=(job.info.image,)))
    wait_for(lambda: job.engine.held_bytes == 0, 10, "pixels released after the error")
    assert not job.engine.window

    stopped = job_with()
    stopped.tiles(stopped.info.tiles)
    wait_for(lambda: stopped.engine.held_bytes == pixels.nbytes, 10, "pixels held")
    stopped.stop.set()  # the job is abandoned (interrupted): its images leave the window
    stopped.thread.join(20)
    wait_for(lambda: stopped.engine.held_bytes == 0, 10, "pixels released at the stop")


# ---------------------------------------------------------------------- end to end


def run_plates(inputs, out, budget: int | None):
    """``run --model plates`` in one process (the sink and worker as threads), on a
    pool whose engine the test reads afterwards."""
    from zmqvision.embedded import LocalCluster
    from zmqvision.pool import Pool
    from zmqvision.sink import SinkConfig
    from zmqvision.ventilator import VentilateConfig
    from zmqvision.worker import WorkerConfig

    job = VentilateConfig(inputs=(str(inputs),), model="plates-det", stage2="plates",
                          cache=None)
    cluster = LocalCluster(SinkConfig(out=str(out), events="tcp://127.0.0.1:0", cache=None),
                           WorkerConfig(model="plates-det", stage2="plates-rec", threads=1),
                           workers=1, in_process=True)
    pool = Pool.for_run(cluster, cache=None)
    if budget is not None:
        pool.engine.stage2_pixels_bytes = budget
    try:
        done = pool.run_files(job)
    finally:
        pool.close()
    assert done.images == 3
    with open(out) as fh:
        records = sorted((json.loads(line) for line in fh if line.strip()),
                         key=lambda r: r["image"])
    engine = pool.engine
    return [(r["image"], r["error"], r["detections"]) for r in records], engine


def test_run_plates_decodes_each_image_once_and_records_match_the_fallback(tmp_path,
                                                                          models_ready):
    from tests.test_plates_samples import PLATE_TEXTS, plate_scene

    d = tmp_path / "in"
    d.mkdir()
    for k, name in enumerate(("coffee", "chelsea", "rocket")):
        image, _ = plate_scene(name, list(PLATE_TEXTS[4 * k:4 * k + 4]), [100, 160, 220, 300],
                               [0, 5, -7, 3], seed=k)
        Image.fromarray(image).save(d / f"p{k}.png")
    kept, engine = run_plates(d, tmp_path / "kept.jsonl", None)
    assert sum(len(dets) for _, _, dets in kept) >= 10
    assert all(err is None for _, err, _ in kept)
    assert engine.rereads == 0 and engine.crop_rereads == 0 and engine.held_bytes == 0
    again, engine = run_plates(d, tmp_path / "again.jsonl", 1)  # nothing fits: re-read
    assert engine.crop_rereads == 3 and engine.held_bytes == 0
    assert again == kept
