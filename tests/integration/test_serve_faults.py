"""`zmqvision serve` while its workers die under load: a real embedded pool of two worker
processes (OpenVINO), eight HTTP clients posting distinct images, SIGKILL.

One worker killed: every request is still answered (200, its tiles re-sent to the other
worker, or a clear 503), none hangs. The last one killed: readiness turns false within 3
heartbeat periods, new requests get 503 at once, those already in flight 504 at their
deadline; nothing lingers at the pool."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from tests.conftest import EXAMPLES, PHOTOS, wait_until

pytestmark = pytest.mark.slow

MODEL = "blazeface-short"
CLIENTS = 8
DEADLINE_S = 10.0  # each request's timeout= (504 past it)
BEAT_S = 1.0  # the embedded workers' heartbeat period (WorkerConfig.heartbeat_s)


@dataclass(frozen=True)
class Answer:
    status: int  # 0: the client gave up (a hang)
    sent: float
    took: float


class Load:
    """``CLIENTS`` clients on a thread of their own, each posting distinct images in turn
    until ``stop()``; every answer is kept with when it was sent and how long it took."""

    def __init__(self, url: str, body: bytes) -> None:
        self.url, self.body = url, body
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _client(self, client: httpx.AsyncClient, first: int) -> None:
        n = first
        while not self._stop.is_set():
            sent = time.monotonic()
            try:  # distinct bytes each (a JPEG ignores what follows its end): no coalescing
                r = await client.post(f"{self.url}/v1/detect",
                                      content=self.body + n.to_bytes(4, "big"),
                                      params={"timeout": str(DEADLINE_S)})
                status = r.status_code
            except httpx.TimeoutException:
                status = 0
            self.answers.append(Answer(status, sent, time.monotonic() - sent))
            n += CLIENTS

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=DEADLINE_S + 20) as client:
            await asyncio.gather(*(self._client(client, i) for i in range(CLIENTS)))

    def after(self, t: float) -> list[Answer]:
        return [a for a in self.answers if a.sent >= t]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE_S + 30)
        assert not self._thread.is_alive(), "a client is still waiting for its answer"


@pytest.fixture
def pool(models_ready):
    from zmqvision import Pool

    with Pool(model=MODEL, workers=2, cache=None) as p:
        wait_until(lambda: p.workers_alive() == 2, 120, "both workers")
        yield p


def _ready(url: str, path: str = "/v2/health/ready") -> bool:
    return httpx.get(f"{url}{path}", timeout=5).status_code == 200


@pytest.mark.timeout(300)
def test_workers_sigkilled_under_load(pool, tmp_path):
    from zmqvision.serve import ServeConfig, Server

    p = tmp_path / "mid.jpg"  # 640x480: some 24 tiles of 128 px
    Image.open(EXAMPLES / PHOTOS[0]).convert("RGB").resize((640, 480)).save(p, quality=90)
    first, last = (w.proc for w in pool.cluster.workers)
    with Server(pool, ServeConfig(port=0, max_queue=64)) as srv:
        load = Load(srv.url, p.read_bytes())
        try:
            wait_until(lambda: len(load.answers) >= 16, 120, "answers with two workers")
            first.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: sum(a.status == 200 for a in load.after(killed)) >= 16, 120,
                       "answers from the worker left")
            # The killed worker's leased tiles went to the other one.
            assert pool.engine.dispatch.requeued > 0
            one_left = [a.status for a in load.answers]
            assert set(one_left) <= {200, 503}, one_left
            assert _ready(srv.url) and _ready(srv.url, f"/v2/models/{MODEL}/ready")

            last.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: not _ready(srv.url), 10, "readiness to turn false", every=0.02)
            assert time.monotonic() - killed < 3 * BEAT_S + 1.0
            assert not _ready(srv.url, f"/v2/models/{MODEL}/ready")
            unready = time.monotonic()
            wait_until(lambda: sum(a.status == 503 for a in load.after(unready)) >= 16, 30,
                       "503s with no worker")
        finally:
            load.stop()
        for a in load.after(unready):  # sent with no worker alive: refused at once
            assert a.status == 503 and a.took < 2.0, a
        for a in load.answers:
            assert a.status in (200, 503, 504), a  # 0 would be a hang
            assert a.status != 504 or a.sent < unready, a  # only those already in flight
            assert a.took < DEADLINE_S + 5, a
        e = pool.engine
        wait_until(lambda: pool.pending == 0 and not e.window, 30,
                   "the pool to forget the requests")
