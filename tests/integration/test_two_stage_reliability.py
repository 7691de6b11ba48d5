"""A worker SIGKILLed while a two-stage job's crops are out: its tiles (stage 1 and the
stage-2 crops alike) come back by its missed heartbeats, and the records equal an
undisturbed run's, one per image, nothing lost or doubled."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ipc, wait_event
from tests.integration.test_reliability import records
from tests.slow_worker import hold
from tests.test_two_stage_faces import faces_of, run_identify, scene  # noqa: F401 (fixture)
from zmqvision import protocol as P

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def crowd(scene, tmp_path_factory):  # noqa: F811 (the fixture imported)
    """Four variants of the planted scene (mirrored, turned, cut): ~35 faces each, so
    plenty of crops are out when a worker dies."""
    src, url, _, _ = scene
    image = np.asarray(Image.open(src / "scene.png"))
    d = tmp_path_factory.mktemp("crowd")
    variants = [image, image[:, ::-1], np.rot90(image), image[200:, 300:]]
    for k, v in enumerate(variants):
        Image.fromarray(np.ascontiguousarray(v)).save(d / f"crowd{k}.png")
    return d, url


def comparable(recs):
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), "an image has more than one record"
    return sorted((r["image"].rsplit("/", 1)[-1], r["error"], faces_of(r)) for r in recs)


def test_a_worker_killed_during_stage_two_loses_nothing(crowd, tmp_path, procs):
    inputs, url = crowd
    undisturbed = comparable(run_identify(inputs, url, tmp_path / "ref.jsonl"))
    assert len(undisturbed) == 4
    assert sum(len(f) for _, _, f in undisturbed) > 100
    out = tmp_path / "out.jsonl"
    _, results, events = procs.sink(out)
    tiles = ipc(tmp_path, "tiles")
    workers = [procs.start("worker", "--model", "centerface", "--stage2", "mobilefacenet",
                           "--tiles", tiles, "--results", results, "--threads", "1",
                           "--heartbeat", "0.5", "--id", f"w{i}", "--announce",
                           name="worker", **hold(300)) for i in range(2)]
    for w in workers:
        procs.announced(w)
    vent = procs.start("ventilate", str(inputs), "--identify", "--gallery", url, "--scales",
                       "native,full", "--bind", tiles, "--sink-results", results,
                       "--sink-events", events, "--no-progress", "--no-cache", "-v",
                       name="ventilate")
    # (Workers slowed, each stage-1 tile held 300 ms: on a quiet machine a job can end
    # before w1's missed heartbeats are counted, and the recovery path goes untaken.)
    assert comparable(kill_w1_during_stage_two(procs, events, vent, workers, out)) \
        == undisturbed


def kill_w1_during_stage_two(procs, events, vent, workers, out) -> list[dict]:
    """SIGKILL worker w1 once the first image's stage 1 is merged (its crops are being
    cut and sent now); the job must still end with its 4 images, having noticed w1 gone.
    The records written."""
    wait_event(events, P.MsgType.OBJECTS, lambda m: len(m.detections) > 0, timeout=240,
               alive=lambda: vent.poll() is None, what="objects for stage 2")
    workers[1].send_signal(signal.SIGKILL)
    assert procs.wait(vent, 300) == 0, procs.log(vent)
    assert "4 images, 0 failed" in procs.log(vent), procs.log(vent)[-2000:]
    assert "worker w1 gone" in procs.log(vent), procs.log(vent)[-3000:]
    return records(out)
