"""``--wire image`` under faults: a worker SIGKILLed while it holds a whole image loses
nothing and doubles nothing, whichever way its image goes out again.

- Every worker takes whole images (``ventilate --wire image``, forced on local workers):
  the dead worker's image is sent whole again, to the worker left.
- The worker that dies is the only one that takes whole images (``--wire auto``: a worker
  on another simulated host gets images, one on the ventilator's host raw tiles): its
  image goes again tile by tile.

Sink, workers and ventilator are separate processes; the records must equal a plain
``zmqvision run`` of the same files (raw tiles, nothing disturbed), and the ventilator's
log must name the recovery path taken.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, PHOTOS, ROOT, ipc, wait_progress, wait_until
from tests.hosts import Network, unavailable
from tests.integration.test_reliability import assert_tiles_came_back_by_heartbeat
from tests.slow_worker import hold
from zmqvision.sockets import EVENTS_PORT, RESULTS_PORT, TILES_PORT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

MODEL = "ssd-mobilenetv2-oid"  # 300 px tiles: 35 to a 1600x1200 image
HOLD_MS = 40  # each tile's result held back: the job outlasts a kill and its detection


def comparable(path: Path) -> list:
    """Records as sorted tuples; fails if an image has two records (something doubled)."""
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), "an image has more than one record"
    return sorted((r["image"], r["width"], r["height"], r["error"], r["tiles"],
                   [(d["label"], round(d["score"], 5), [round(v, 3) for v in d["box"]])
                    for d in r["detections"]]) for r in recs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """6 photos of 1600x1200 (35 tiles each, 210 in all)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("whole")
    photos = [Image.open(EXAMPLES / p).convert("RGB") for p in PHOTOS]
    for i in range(6):
        photos[i % 4].resize((1600, 1200)).rotate(i * 11).save(d / f"img{i}.jpg", quality=90)
    return d


@pytest.fixture(scope="module")
def undisturbed(folder, tmp_path_factory, models_ready) -> list:
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(folder), "--model",
                        MODEL, "--out", str(out), "--no-progress", "--wire", "raw"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    ref = comparable(out)
    assert len(ref) == 6 and all(r[3] is None and r[4] == 35 for r in ref), ref
    return ref


def test_a_worker_killed_holding_a_whole_image_it_goes_whole_again(folder, tmp_path, procs,
                                                                    undisturbed):
    out = tmp_path / "out.jsonl"
    _, results, events = procs.sink(out)
    tiles = ipc(tmp_path, "tiles")
    # One request each: a worker holds one image at a time (credit in tiles: the next
    # comes only once its Readies have repaid this one's 35 tiles), so a worker killed
    # mid-job always holds a whole image with tiles left to do.
    workers = [procs.start("worker", "--model", MODEL, "--tiles", tiles, "--results", results,
                           "--threads", "1", "--requests", "1", "--heartbeat", "0.5",
                           "--id", f"w{i}", "--announce", name="worker", **hold(HOLD_MS))
               for i in range(2)]
    for w in workers:  # both ready first: each takes an image at the job's first moment
        procs.announced(w)
    vent = procs.start("ventilate", str(folder), "--model", MODEL, "--bind", tiles,
                       "--sink-results", results, "--sink-events", events, "--wire",
                       "image", "--no-progress", "-v", name="ventilate")
    wait_progress(events, 10, alive=lambda: vent.poll() is None)
    workers[0].send_signal(signal.SIGKILL)
    assert procs.wait(vent, 300) == 0, procs.log(vent)
    log = procs.log(vent)
    assert "6 images, 0 failed" in log, log
    assert comparable(out) == undisturbed
    assert "tiles as image" in log and "tiles as raw" not in log, log
    assert_tiles_came_back_by_heartbeat(log, "w0")
    again = re.findall(r"image (\S+) sent whole again \(35 tiles, attempt 2\) to worker w1",
                       log)
    assert len(again) == 1, log[-4000:]
    assert "tile by tile" not in log, log[-4000:]


_WHY = unavailable()


@pytest.mark.skipif(_WHY is not None, reason=f"simulated hosts: {_WHY}")
def test_the_only_image_worker_killed_its_image_goes_tile_by_tile(folder, tmp_path,
                                                                  undisturbed):
    """``--wire auto``: a worker on another host takes whole images, one on the
    ventilator's own host (over loopback) raw tiles. The image worker dies holding an
    image: nobody left takes images, so its tiles go one by one to the raw worker."""
    env = {"PYTHONPATH": str(ROOT), "ZMQVISION_RESULTS_CACHE": "off"}
    with Network(2, rate="1gbit", logs=tmp_path / "logs", env=env) as net:
        home, remote = net.hosts
        out = tmp_path / "out.jsonl"
        # The documented ports, on purpose (`--connect HOST` relies on them): they are bound
        # in this run's own network namespaces (named by pid and a random tag), which no
        # other test run shares, so two runs cannot meet there.
        net.start(home, "sink", "--out", str(out), "--bind-results", f"tcp://*:{RESULTS_PORT}",
                  "--bind-events", f"tcp://*:{EVENTS_PORT}", "--insecure", name="sink")

        def worker(host, connect: str, wid: str):
            return net.start(host, "worker", "--model", MODEL, "--connect", connect,
                             "--threads", "1", "--requests", "1", "--heartbeat", "0.5",
                             "--id", wid, "--announce", name="worker", **hold(HOLD_MS))

        whole = worker(remote, home.addr, "remote-w")
        raw = worker(home, "127.0.0.1", "local-w")
        for w in (whole, raw):
            net.announced(w)
        vent = net.start(home, "ventilate", str(folder), "--model", MODEL, "--bind",
                         f"tcp://*:{TILES_PORT}", "--wire", "auto", "--no-progress", "-v",
                         "--insecure", name="ventilate")
        # The events port is bound in the sink's namespace: watch progress from inside it.
        watcher = net.start(home, "watch", "--connect", "127.0.0.1", "--json", name="watch")
        wait_until(lambda: any(e.get("type") == "zv.progress" and e.get("tiles_done", 0) >= 10
                               for e in net.json_lines(watcher)), 120, "10 tiles done",
                   alive=lambda: vent.poll() is None)
        os.killpg(whole.pid, signal.SIGKILL)
        assert net.wait(vent, 300) == 0, net.log(vent)
        log = net.log(vent)
        assert "6 images, 0 failed" in log, log
        assert comparable(out) == undisturbed
        assert "tiles as image" in log and "tiles as raw" in log, log
        assert_tiles_came_back_by_heartbeat(log, "remote-w")
        assert len(re.findall(r"goes again tile by tile \(35 tiles\)", log)) == 1, log[-4000:]
        assert "sent whole again" not in log, log[-4000:]

