"""The ventilator's engine against peers written here that speak the real protocol over
real sockets: a sink that only listens (PULL + PUB) and workers (DEALERs) that take tiles
and leave without answering, so tiles must be sent again."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import zmq
from PIL import Image

from zmqvision import protocol, sockets

MODEL = "blazeface-short"


def hello(dealer: zmq.Socket, wid: str, credit: int, model: str, stage2: str | None = None,
          in_flight: int = 0) -> None:
    """A worker's first words: its Ready, then a heartbeat naming the models it serves
    (refs; a ventilator sends a worker tiles only of those, and nothing before)."""
    dealer.send_multipart(protocol.encode(protocol.Ready(wid, credit)))
    dealer.send_multipart(protocol.encode(protocol.Heartbeat(
        worker=wid, host="h", pid=1, device="CPU", model=model, tiles_done=0,
        tiles_failed=0, tiles_per_s=0.0, in_flight=in_flight, queue=0, uptime=1.0,
        requests=credit, stage2=stage2)))


class Harness:
    """A file job on a Pool that joins a listening fake sink over ipc endpoints."""

    def __init__(self, tmp_path, image) -> None:
        from zmqvision.pool import Pool
        from zmqvision.ventilator import VentilateConfig

        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pub = self.ctx.socket(zmq.PUB)
        for s in (self.pull, self.pub):
            s.linger = 0
        results = f"ipc://{tmp_path}/results"
        events = f"ipc://{tmp_path}/events"
        self.pull.bind(results)
        self.pub.bind(events)
        self.config = VentilateConfig(inputs=(str(image),), model=MODEL, cache=None,
                                      tiles=f"ipc://{tmp_path}/tiles", sink=results,
                                      events=events)
        self.pool = Pool.connect(tiles=self.config.tiles, sink=results, events=events,
                                 model=MODEL, cache=None)
        self.stop = sockets.StopFlag()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.dealers: list[zmq.Socket] = []

    def _run(self) -> None:
        from zmqvision.engine import JobFailed

        with contextlib.suppress(JobFailed):
            self.pool.run_files(self.config, self.stop)

    def worker(self, wid: str, credit: int) -> zmq.Socket:
        d = self.ctx.socket(zmq.DEALER)
        d.linger = 0
        d.setsockopt(zmq.ROUTING_ID, wid.encode())
        d.connect(self.config.tiles)
        hello(d, wid, credit, self.pool.plan(self.pool.defaults).model_ref)
        self.dealers.append(d)
        return d

    def tiles(self, dealer: zmq.Socket, n: int, timeout: float = 20.0) -> list[protocol.Tile]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            if dealer.poll(100):
                got.append(protocol.decode(dealer.recv_multipart(copy=False)))
        return got

    def sink_messages(self, accept, n: int, timeout: float = 20.0) -> list:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            if self.pull.poll(100):
                msg = protocol.decode(self.pull.recv_multipart(copy=False))
                if accept(msg):
                    got.append(msg)
        return got

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        self.pool.close()
        for s in (*self.dealers, self.pull, self.pub):
            s.close(linger=0)
        self.ctx.term()


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "img.png"
    Image.new("RGB", (300, 300), (90, 120, 200)).save(p)
    return p


@pytest.fixture
def harness(tmp_path, image, models_ready):
    h = Harness(tmp_path, image)
    try:
        yield h
    finally:
        h.close()


def _tiles_of_one_image(harness) -> list[protocol.Tile]:
    info = harness.sink_messages(lambda m: isinstance(m, protocol.ImageInfo), 1)
    assert info and info[0].tiles > 1
    n = info[0].tiles
    first = harness.worker("w1", n)
    tiles = harness.tiles(first, n)
    assert len(tiles) == n and all(t.attempt == 0 for t in tiles)
    return tiles


@pytest.mark.timeout(60)
def test_tiles_sent_again_count_their_attempt(harness):
    tiles = _tiles_of_one_image(harness)
    harness.dealers[0].send_multipart(protocol.encode(protocol.Bye("w1")))  # leaves, unanswered
    second = harness.worker("w2", len(tiles))
    again = harness.tiles(second, len(tiles))
    assert sorted(t.index for t in again) == sorted(t.index for t in tiles)
    assert all(t.attempt == 1 for t in again)  # the protocol: times sent before


@pytest.mark.timeout(60)
def test_a_file_changed_before_a_resend_becomes_the_images_error(harness, image):
    """The image's pixels are gone once every tile was cut; a tile sent again is cut from
    the file read anew. A file that changed meanwhile must not be dropped silently (the
    job would never end): every such tile is answered as the image's error."""
    tiles = _tiles_of_one_image(harness)
    Image.new("RGB", (300, 300), (0, 0, 0)).save(image)  # another picture, same name
    harness.dealers[0].send_multipart(protocol.encode(protocol.Bye("w1")))
    harness.worker("w2", len(tiles))
    failed = harness.sink_messages(lambda m: isinstance(m, protocol.Result), len(tiles))
    assert sorted(r.index for r in failed) == sorted(t.index for t in tiles)
    assert {r.error["type"] for r in failed} == {"changed_during_job"}
    assert all(r.worker == "ventilator" for r in failed)
    assert not harness.tiles(harness.dealers[1], 1, timeout=0.5)  # nothing cut from it


class FakeSink:
    """A sink written here: PULL for what the pool announces, PUB for what it answers."""

    def __init__(self, tmp_path) -> None:
        self.ctx = zmq.Context()
        self.pull, self.pub = self.ctx.socket(zmq.PULL), self.ctx.socket(zmq.PUB)
        for s in (self.pull, self.pub):
            s.linger = 0
        self.results, self.events = f"ipc://{tmp_path}/r", f"ipc://{tmp_path}/e"
        self.pull.bind(self.results)
        self.pub.bind(self.events)

    def next(self, kind, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pull.poll(100):
                msg = protocol.decode(self.pull.recv_multipart(copy=False))
                if isinstance(msg, kind):
                    return msg
        raise AssertionError(f"no {kind.__name__} in {timeout} s")

    def publish(self, msg) -> None:
        self.pub.send_multipart(protocol.encode(msg))

    def heard_by(self, pool, timeout: float = 10.0) -> None:
        """Publish the sink's status until the pool has heard it (a SUB joins late)."""
        deadline = time.monotonic() + timeout
        while pool.engine.sink.sink_id != "s1":
            assert time.monotonic() < deadline, "the pool never heard the sink"
            self.publish(protocol.SinkStatus(sink="s1", host="h", pid=1, uptime=0.0,
                                             jobs_active=0, bad_messages=0))
            time.sleep(0.02)

    def close(self) -> None:
        self.pull.close(0)
        self.pub.close(0)
        self.ctx.term()


@pytest.fixture
def fake_sink(tmp_path):
    s = FakeSink(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.timeout(60)
def test_a_request_gets_the_record_the_sink_publishes(fake_sink, tmp_path, image, models_ready):
    from zmqvision.pool import Pool

    with Pool.connect(tiles=f"ipc://{tmp_path}/t", sink=fake_sink.results,
                      events=fake_sink.events, model=MODEL, cache=None) as pool:
        fake_sink.heard_by(pool)
        future = pool.submit(image)
        start = fake_sink.next(protocol.JobStart)
        assert start.options["records"] == "publish"
        info = fake_sink.next(protocol.ImageInfo)
        record = {"image": str(image), "id": info.image, "detections": [], "error": None}
        import json

        fake_sink.publish(protocol.Record(sink="s1", job=start.job, image=info.image,
                                          json=json.dumps(record).encode()))
        assert future.result(timeout=10) == record
        assert not pool.engine.window


@pytest.mark.timeout(60)
def test_a_record_lost_on_the_way_is_asked_for_again_then_fails(fake_sink, tmp_path, image,
                                                                 models_ready):
    """An image ack with no record before it (the PUB dropped the record): the pool
    announces the image again, three times, then fails the request with a clear error."""
    from zmqvision.engine import JobFailed
    from zmqvision.pool import Pool

    with Pool.connect(tiles=f"ipc://{tmp_path}/t", sink=fake_sink.results,
                      events=fake_sink.events, model=MODEL, cache=None) as pool:
        fake_sink.heard_by(pool)
        future = pool.submit(image)
        start = fake_sink.next(protocol.JobStart)
        info = fake_sink.next(protocol.ImageInfo)
        for _ in range(3):
            fake_sink.publish(protocol.Ack(sink="s1", job=start.job, images=(info.image,)))
            again = fake_sink.next(protocol.ImageInfo)
            assert again.image == info.image and not future.done()
        fake_sink.publish(protocol.Ack(sink="s1", job=start.job, images=(info.image,)))
        with pytest.raises(JobFailed, match="no record"):
            future.result(timeout=10)
        assert not pool.engine.window
