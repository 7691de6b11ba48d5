"""`zmqvision serve` with real HTTP clients (curl, httpx, Triton's tritonclient), a real
pool (sink and worker processes, OpenVINO) and real sockets on ports the OS picks.

Records served equal `zmqvision run`'s; deadlines and disconnects withdraw the pool's
request; a full server answers 429; coalescing infers the same bytes once; readiness
follows the workers the pool hears."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXAMPLES, PHOTOS, ROOT, ipc, wait_until
from zmqvision import results

pytestmark = pytest.mark.slow

MODEL = "blazeface-short"  # 128 px tiles: fast, and a large image is many tiles
SAME = ("width", "height", "model", "detections", "error", "hash", "tiles", "settings")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models_ready) -> dict[str, dict]:
    """`zmqvision run`'s records of the example photos, by file name."""
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(EXAMPLES), "--model",
                        MODEL, "--out", str(out), "--no-cache", "--no-progress", "--ext",
                        "jpg"], cwd=ROOT, capture_output=True, text=True, timeout=170,
                       env=_env())
    assert p.returncode == 0, p.stdout + p.stderr
    return {Path(r["image"]).name: r for r in results.read_jsonl(out)}


def _env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def pool(models_ready):
    from zmqvision import Pool

    with Pool(model=MODEL, cache=None) as p:
        wait_until(p.workers_alive, 120, "the pool's worker")
        yield p


@pytest.fixture(scope="module")
def server(pool):
    from zmqvision.serve import ServeConfig, Server

    with Server(pool, ServeConfig(port=0, max_queue=16, max_body=4 << 20)) as s:
        yield s


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """3200x2400: about 800 tiles of 128 px, seconds of inference on this machine."""
    p = tmp_path_factory.mktemp("big") / "big.jpg"
    Image.open(EXAMPLES / PHOTOS[0]).convert("RGB").resize((3200, 2400)).save(p, quality=90)
    return p


def _same_as_run(record: dict, ref: dict) -> None:
    assert {k: record[k] for k in SAME} == {k: ref[k] for k in SAME}


def _settled(pool, timeout: float = 30.0) -> bool:
    """Nothing pending at the pool, nothing in flight, leased or waiting to be re-sent."""
    e = pool.engine
    return bool(wait_until(lambda: (pool.pending == 0 and not e.window
                                    and not e.dispatch.leases and not e.dispatch.resend),
                           timeout, "the pool to settle"))


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if m and (not labels or all(f'{k}="{v}"' in (m.group(1) or "")
                                    for k, v in labels.items())):
            total += float(m.group(2))
    return total


# ---------------------------------------------------------------------- /v1/detect


@pytest.mark.timeout(240)
def test_curl_raw_body_and_form_equal_run(server, reference):
    for photo in PHOTOS:
        path = EXAMPLES / photo
        for how in (["--data-binary", f"@{path}", "-H", "Content-Type: image/jpeg"],
                    ["-F", f"image=@{path}"]):
            p = subprocess.run(["curl", "-sS", "-w", "\\n%{http_code}", *how,
                                f"{server.url}/v1/detect?name={photo}"],
                               capture_output=True, text=True, timeout=60)
            body, status = p.stdout.rsplit("\n", 1)
            assert status == "200", body
            record = json.loads(body)
            assert record["image"] == photo
            _same_as_run(record, reference[photo])


@pytest.mark.timeout(120)
def test_query_options_shape_the_record(server):
    body = (EXAMPLES / PHOTOS[0]).read_bytes()
    r = httpx.post(f"{server.url}/v1/detect", content=body, timeout=60,
                   params={"tile_size": "256", "overlap": "0.1", "merge": "nms",
                           "score_threshold": "0.6"})
    assert r.status_code == 200, r.text
    s = r.json()["settings"]
    assert s["tiling"]["tile_size"] == [256, 256] and s["tiling"]["overlap"] == 0.1
    assert s["merge"]["method"] == "nms" and s["score_threshold"] == 0.6
    assert all(d["score"] >= 0.6 for d in r.json()["detections"])
    bad = httpx.post(f"{server.url}/v1/detect", content=body, params={"overlap": "2"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "bad_request"
    bad = httpx.post(f"{server.url}/v1/detect", content=body, params={"colour": "red"})
    assert bad.status_code == 400 and "unknown option" in bad.json()["error"]["message"]


@pytest.mark.timeout(120)
def test_batch_answers_every_image_in_order(server, reference):
    files = [("image", (p, (EXAMPLES / p).read_bytes(), "image/jpeg")) for p in PHOTOS]
    files.insert(2, ("image", ("junk.jpg", b"not an image at all", "image/jpeg")))
    r = httpx.post(f"{server.url}/v1/detect/batch", files=files, timeout=60)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert [x["image"] for x in records] == [*PHOTOS[:2], "junk.jpg", *PHOTOS[2:]]
    assert records[2]["error"]["type"] == "unsupported_format"
    for rec in records[:2] + records[3:]:
        _same_as_run(rec, reference[rec["image"]])


@pytest.mark.timeout(120)
def test_garbage_400_oversized_body_413_too_many_pixels_422(server):
    r = httpx.post(f"{server.url}/v1/detect", content=b"\x00garbage" * 10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "unsupported_format"
    truncated = (EXAMPLES / PHOTOS[0]).read_bytes()[:5000]
    r = httpx.post(f"{server.url}/v1/detect", content=truncated)
    assert r.status_code == 400 and r.json()["error"]["type"] == "corrupt_image"
    r = httpx.post(f"{server.url}/v1/detect", content=b"")
    assert r.status_code == 400 and r.json()["error"]["type"] == "empty_file"
    r = httpx.post(f"{server.url}/v1/detect", content=b"x" * (5 << 20))
    assert r.status_code == 413
    # A chunked body (no Content-Length) over the limit, as a stream.
    r = httpx.post(f"{server.url}/v1/detect", content=iter([b"x" * (1 << 20)] * 5))
    assert r.status_code == 413
    r = httpx.post(f"{server.url}/v1/detect", files={"image": ("a.jpg", b"x" * (5 << 20))})
    assert r.status_code == 413
    r = httpx.post(f"{server.url}/v1/detect", params={"max_pixels": "1000"},
                   content=(EXAMPLES / PHOTOS[0]).read_bytes())
    assert r.status_code == 422 and r.json()["error"]["type"] == "too_large"
    r = httpx.post(f"{server.url}/v1/detect", params={"max_pixels": str(1 << 39)},
                   content=(EXAMPLES / PHOTOS[0]).read_bytes())
    assert r.status_code == 400  # a client may lower the pixel limit, never raise it


# ---------------------------------------------------------------------- deadlines, load


@pytest.mark.timeout(180)
def test_deadline_gives_504_and_withdraws_the_request(server, pool, big):
    body = big.read_bytes()
    started = time.monotonic()
    r = httpx.post(f"{server.url}/v1/detect", content=body, params={"timeout": "0.5"},
                   timeout=60)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    assert time.monotonic() - started < 10
    r = httpx.post(f"{server.url}/v1/detect", content=body, timeout=60,
                   headers={"Request-Timeout": "0.3"})
    assert r.status_code == 504
    assert _settled(pool), "a request past its deadline left work at the pool"
    assert httpx.post(f"{server.url}/v1/detect", content=(EXAMPLES / PHOTOS[1]).read_bytes(),
                      timeout=60).status_code == 200


@pytest.mark.timeout(180)
def test_client_disconnect_withdraws_the_request(server, pool, big):
    before = _metric(server.url, "zmqvision_http_requests_total", status="499")
    for _ in range(5):
        # A worker busy on a loaded machine may miss 3 heartbeats: then 503 at once.
        wait_until(pool.workers_alive, 60, "a worker heard")
        try:
            r = httpx.post(f"{server.url}/v1/detect", content=big.read_bytes(),
                           timeout=httpx.Timeout(1.0, write=30))
        except httpx.ReadTimeout:
            break  # the client gave up and closed its connection
        assert r.status_code == 503, r.text
    else:
        raise AssertionError("the request was never in flight when its client left")
    wait_until(lambda: _metric(server.url, "zmqvision_http_requests_total",
                               status="499") > before, 30, "the handler to be cancelled")
    assert _settled(pool), "a request whose client left was not withdrawn"


@pytest.mark.timeout(180)
def test_past_the_queue_limit_429_with_retry_after(server, pool, big):
    body = big.read_bytes()

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            # Distinct bytes each (no coalescing): 24 images for a limit of 16.
            return await asyncio.gather(*(client.post(
                f"{server.url}/v1/detect", content=body + bytes([i]),
                params={"timeout": "3"}) for i in range(24)))

    answers = asyncio.run(flood())
    statuses = sorted(r.status_code for r in answers)
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) >= 8, statuses
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    assert set(statuses) <= {200, 429, 504}, statuses
    assert _settled(pool)
    assert _metric(server.url, "zmqvision_serve_rejected_total") >= 8


@pytest.mark.timeout(180)
def test_the_same_image_in_flight_is_inferred_once(server, pool, tmp_path):
    p = tmp_path / "mid.jpg"
    Image.open(EXAMPLES / PHOTOS[2]).convert("RGB").resize((1200, 900)).save(p, quality=90)
    body = p.read_bytes()
    sent = pool.engine.workers.tiles_sent
    coalesced = _metric(server.url, "zmqvision_serve_coalesced_total")

    async def same() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{server.url}/v1/detect",
                                                      content=body, params={"name": f"n{i}"})
                                          for i in range(8)))

    answers = asyncio.run(same())
    assert all(r.status_code == 200 for r in answers)
    records = [r.json() for r in answers]
    assert [r["image"] for r in records] == [f"n{i}" for i in range(8)]
    assert all(r["detections"] == records[0]["detections"] for r in records)
    tiles = records[0]["tiles"]
    assert pool.engine.workers.tiles_sent - sent == tiles, "inferred more than once"
    assert _metric(server.url, "zmqvision_serve_coalesced_total") - coalesced == 7


@pytest.mark.timeout(120)
def test_metrics_name_what_the_issue_asks(server):
    httpx.post(f"{server.url}/v1/detect", content=(EXAMPLES / PHOTOS[3]).read_bytes(),
               timeout=60)
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("zmqvision_http_requests_total", "zmqvision_http_request_seconds_bucket",
                 "zmqvision_http_in_flight", "zmqvision_serve_queue_depth",
                 "zmqvision_serve_cache_hits_total", "zmqvision_workers_alive",
                 "zmqvision_pool_pending", "zmqvision_pool_tiles_sent_total"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    assert _metric(server.url, "zmqvision_workers_alive") == 1
    assert _metric(server.url, "zmqvision_http_requests_total", route="/v1/detect",
                   status="200") >= 1


@pytest.mark.timeout(120)
def test_idle_stream_jobs_expire(server, pool):
    """Each distinct settings is a stream job at the pool (and at the sink); one unused
    for stream_idle_s is ended and forgotten, and its settings start a new job when they
    come back, with the same records."""
    body = (EXAMPLES / PHOTOS[0]).read_bytes()

    def post(threshold: str) -> dict:
        r = httpx.post(f"{server.url}/v1/detect", content=body, timeout=60,
                       params={"score_threshold": threshold})
        assert r.status_code == 200, r.text
        return r.json()

    idle = pool.stream_idle_s
    try:
        first = post("0.71")
        job = first["job"]
        assert job in pool.engine.jobs
        pool.stream_idle_s = 0.3
        # Any request sweeps: the other settings' job is ended once unused for 0.3 s.
        wait_until(lambda: post("0.72") and job not in pool.engine.jobs, 30,
                   "the idle stream job to be ended")
        assert job not in {j.id for j in pool._streams.values()}
        wait_until(lambda: post("0.72") and pool.stream_jobs <= 1, 30,
                   "only the settings in use to keep a job")
        again = post("0.71")
        assert again["job"] != job and again["detections"] == first["detections"]
        assert _metric(server.url, "zmqvision_pool_stream_jobs") >= 1
    finally:
        pool.stream_idle_s = idle


def test_settings_gate_forgets_settings_unused_for_the_idle_time():
    from zmqvision.serve.options import BadOptions, SettingsGate

    gate = SettingsGate(2, 1 << 30, idle_s=0.05)
    gate.settings({"overlap": "0.1"})
    gate.settings({"overlap": "0.2"})
    with pytest.raises(BadOptions, match="at most 2"):
        gate.settings({"overlap": "0.3"})
    started = time.monotonic()
    wait_until(lambda: time.monotonic() - started > 0.1, 5, "the idle time to pass")
    assert gate.settings({"overlap": "0.3"})["overlap"] == 0.3


# ---------------------------------------------------------------------- slow clients


class Trickle:
    """A raw socket that sends ``head`` and then one byte of ``drip`` every ``every`` s
    (a slowloris client), on a thread, until the server closes the connection or
    ``stop()``. ``answer()`` reads what the server said until it closed."""

    def __init__(self, port: int, head: bytes, drip: bytes, every: float = 0.1) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(head)
        self.opened = time.monotonic()
        self.sent = 0
        self._drip, self._every = drip, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.sock.send(self._drip[self.sent % len(self._drip):][:1])
            except OSError:
                return  # the server closed it
            self.sent += 1

    def answer(self) -> tuple[bytes, float]:
        """Everything the server sent, and the seconds from opening to its close."""
        chunks = []
        try:
            while chunk := self.sock.recv(65536):  # 10 s socket timeout: never hangs
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks), time.monotonic() - self.opened

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


@pytest.fixture
def strict(pool):
    """A second server on the same pool with short header and body timeouts."""
    from zmqvision.serve import ServeConfig, Server

    with Server(pool, ServeConfig(port=0, header_timeout=1.0, read_timeout=1.0)) as s:
        yield s


@pytest.mark.timeout(120)
def test_slow_headers_are_cut_off_and_others_served(strict):
    """A client sending its headers a byte at a time is disconnected header_timeout after
    it connected, though it never stopped sending; others are answered meanwhile."""
    slow = [Trickle(strict.port, b"POST /v1/detect HTTP/1.1\r\nHost: x\r\n",
                    b"X-Slow: " + b"a" * 4096) for _ in range(20)]
    try:
        body = (EXAMPLES / PHOTOS[0]).read_bytes()
        r = httpx.post(f"{strict.url}/v1/detect", content=body, timeout=60)
        assert r.status_code == 200 and r.json()["error"] is None
        for t in slow:
            said, took = t.answer()
            assert said == b"", said[:200]  # no answer: the request never began
            assert 0.9 <= took < 5, took
            assert t.sent >= 5  # it was still sending when cut off
    finally:
        for t in slow:
            t.stop()
    # An idle keep-alive connection goes the same way (the same clock, from its answer).
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        said = b""
        while chunk := sock.recv(65536):
            said += chunk
        assert said.startswith(b"HTTP/1.1 200 ") and said.endswith(b'{"live":true}')


@pytest.mark.timeout(120)
def test_slow_body_gets_408_and_holds_no_slot(strict, pool):
    """Headers complete, then the body a byte at a time: 408 at read_timeout and the
    connection closed; meanwhile it held no admission slot and the pool saw nothing."""
    head = (b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n")
    slow = [Trickle(strict.port, head, b"\xff") for _ in range(10)]
    try:
        wait_until(lambda: _metric(strict.url, "zmqvision_http_in_flight") >= 10, 30,
                   "the slow requests to reach their handlers")
        assert _metric(strict.url, "zmqvision_serve_queue_depth") == 0
        assert pool.pending == 0
        r = httpx.post(f"{strict.url}/v1/detect", content=(EXAMPLES / PHOTOS[1]).read_bytes(),
                       timeout=60)
        assert r.status_code == 200
        for t in slow:
            said, took = t.answer()
            assert said.startswith(b"HTTP/1.1 408 "), said[:200]
            assert b"request_timeout" in said
            assert took < 5, took
    finally:
        for t in slow:
            t.stop()
    assert _metric(strict.url, "zmqvision_http_requests_total", status="408") >= 10


# ---------------------------------------------------------------------- the command


class ServeProcess:
    """`zmqvision serve` as a user starts it, on a port the OS picks."""

    def __init__(self, procs, *args: str) -> None:
        self.procs = procs
        self.p = procs.start("serve", "--port", "0", "--announce", "--model", MODEL,
                             "--no-cache", *args, name="serve")
        self.url = procs.announced(self.p)["url"]

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200


@pytest.mark.timeout(240)
def test_tritonclient_unmodified_equals_run(procs, reference, models_ready):
    import tritonclient.http as triton

    srv = ServeProcess(procs)
    wait_until(srv.ready, 120, "readiness", alive=lambda: srv.p.poll() is None)
    client = triton.InferenceServerClient(srv.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["name"] == "zmqvision"
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"][0]["datatype"] == "BYTES"
        assert client.is_model_ready(MODEL)
        for photo in PHOTOS:
            data = (EXAMPLES / photo).read_bytes()
            for binary in (True, False):
                inp = triton.InferInput("image", [1], "BYTES")
                inp.set_data_from_numpy(np.array([data], dtype=object), binary_data=True)
                outs = [triton.InferRequestedOutput(n, binary_data=binary)
                        for n in ("boxes", "scores", "labels")]
                res = client.infer(MODEL, [inp], outputs=outs)
                dets = reference[photo]["detections"]
                boxes = res.as_numpy("boxes")
                assert boxes.shape == (len(dets), 4)
                np.testing.assert_array_equal(
                    boxes, np.array([d["box"] for d in dets], np.float32).reshape(-1, 4))
                np.testing.assert_array_equal(
                    res.as_numpy("scores"), np.array([d["score"] for d in dets], np.float32))
                np.testing.assert_array_equal(
                    res.as_numpy("labels"), np.array([d["class_id"] for d in dets], np.int32))
        inp = triton.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"junk"], dtype=object))
        with pytest.raises(triton.InferenceServerException, match="unsupported_format"):
            client.infer(MODEL, [inp])
    finally:
        client.close()
    assert procs.stop(srv.p) == 0


@pytest.mark.timeout(240)
def test_readiness_follows_the_workers(procs, tmp_path, models_ready):
    """A front end to a cluster: ready only while a worker with its model is heard; a
    worker SIGKILLed turns it false within 3 heartbeat periods, a new worker turns it true
    again."""
    _, results_ep, events_ep = procs.sink(tmp_path / "r.jsonl", "--no-cache")
    tiles = ipc(tmp_path, "tiles")
    srv = ServeProcess(procs, "--connect", "127.0.0.1", "--bind", tiles, "--sink-results",
                       results_ep, "--sink-events", events_ep)
    assert not srv.ready(), "ready with no worker at all"
    beat = 0.3

    def worker(model: str = MODEL):
        return procs.start("worker", "--model", model, "--tiles", tiles, "--results",
                           results_ep, "--heartbeat", str(beat), name="worker")

    def model_ready() -> bool:
        return httpx.get(f"{srv.url}/v2/models/{MODEL}/ready", timeout=5).status_code == 200

    assert not model_ready()
    # A worker of another model is heard, yet nothing here can answer: not ready, and a
    # request gets 503 rather than a model_mismatch record.
    other = worker("ssd-mobilenetv2-oid")
    wait_until(lambda: _metric(srv.url, "zmqvision_workers_alive") == 1, 120,
               "the other model's worker", alive=lambda: other.poll() is None)
    assert not srv.ready() and not model_ready()
    r = httpx.post(f"{srv.url}/v1/detect", content=(EXAMPLES / PHOTOS[0]).read_bytes(),
                   timeout=10)
    assert r.status_code == 503
    assert procs.stop(other) == 0
    w = worker()
    wait_until(srv.ready, 120, "readiness with a worker", alive=lambda: w.poll() is None)
    assert model_ready()
    r = httpx.post(f"{srv.url}/v1/detect", content=(EXAMPLES / PHOTOS[0]).read_bytes(),
                   timeout=60)
    assert r.status_code == 200 and r.json()["error"] is None
    w.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not srv.ready(), 10, "readiness to turn false", every=0.02)
    # 3 periods, plus the dispatcher's housekeeping pass and this poll.
    assert time.monotonic() - killed < 3 * beat + 0.5
    assert not model_ready()
    r = httpx.post(f"{srv.url}/v1/detect", content=(EXAMPLES / PHOTOS[0]).read_bytes(),
                   timeout=10)  # no worker: a clear 503 at once, not a wait
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    w2 = worker()
    wait_until(srv.ready, 120, "readiness with a new worker", alive=lambda: w2.poll() is None)
    assert model_ready()
    r = httpx.post(f"{srv.url}/v1/detect", content=(EXAMPLES / PHOTOS[1]).read_bytes(),
                   timeout=60)
    assert r.status_code == 200 and r.json()["error"] is None
    assert procs.stop(srv.p) == 0


# ---------------------------------------------------------------------- README


def _readme_serve_blocks() -> tuple[list[str], list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## serve", 1)[1].split("\n## ", 1)[0]
    shell = re.findall(r"```(?:sh|bash)\n(.*?)```", section, re.S)
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    return shell, python


@pytest.mark.timeout(180)
def test_the_readme_serve_examples_run(server):
    shell, python = _readme_serve_blocks()
    assert shell and python
    for block in shell:
        for line in block.splitlines():
            if not line.startswith("curl "):
                continue  # starting the server: the test's own stands in
            cmd = line.replace("http://127.0.0.1:8000", server.url)
            p = subprocess.run(["bash", "-c", cmd + " -sS --fail-with-body"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, (cmd, p.stdout, p.stderr)
    for block in python:
        code = block.replace("http://127.0.0.1:8000", server.url)
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, env=_env())
        assert p.returncode == 0, (code, p.stdout, p.stderr)
        assert p.stdout.strip(), "the example printed nothing"

