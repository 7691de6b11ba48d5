"""``--frames first|all`` through the real pipeline (processes, sockets, CenterFace): an
animated GIF and a multi-page TIFF of real photos with a face in frame 1 only. One record
per frame that says which frame, ``--resume`` carrying over exactly the done frames, each
frame cached under its own key, and a worker killed mid-job losing no frame."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import EXAMPLES, ROOT, ipc, wait_progress
from tests.slow_worker import hold

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Frame 1 (the astronaut) has a face; the others have none.
FRAMES = ["coffee.jpg", "astronaut.jpg", "rocket.jpg"]


def _frames(size) -> list[Image.Image]:
    return [Image.open(EXAMPLES / p).convert("RGB").resize(size) for p in FRAMES]


@pytest.fixture
def folder(tmp_path):
    """anim.gif and pages.tif (3 frames of 320x240: one tile each) and a still JPEG."""
    d = tmp_path / "in"
    d.mkdir()
    ims = _frames((320, 240))
    ims[0].save(d / "anim.gif", save_all=True, append_images=ims[1:], duration=100)
    ims[0].save(d / "pages.tif", save_all=True, append_images=ims[1:])
    ims[1].save(d / "still.jpg", quality=90)
    return d


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", *args, "--no-progress"],
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def records(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def by_frame(recs: list[dict]) -> dict[tuple[str, int | None], dict]:
    out = {}
    for r in recs:
        key = (r["image"].rsplit("/", 1)[-1], r.get("frame"))
        assert key not in out, f"two records for {key}"
        out[key] = r
    return out


def faces(recs) -> dict:
    return {k: len(r["detections"]) for k, r in by_frame(recs).items()}


def test_frames_all_gives_a_record_per_frame_and_first_one_for_frame_0(folder, tmp_path,
                                                                      models_ready):
    out = tmp_path / "all.jsonl"
    p = run(str(folder), "--frames", "all", "--out", str(out))
    assert "7 images, 0 failed" in p.stdout, p.stdout
    recs = records(out)
    assert faces(recs) == {("anim.gif", 0): 0, ("anim.gif", 1): 1, ("anim.gif", 2): 0,
                           ("pages.tif", 0): 0, ("pages.tif", 1): 1, ("pages.tif", 2): 0,
                           ("still.jpg", None): 1}
    for r in recs:
        if r["image"].endswith("still.jpg"):
            assert "frame" not in r and "frames" not in r  # a still image's record as ever
        else:
            assert r["frames"] == 3 and r["error"] is None
    assert len({r["id"] for r in recs}) == 7

    first = tmp_path / "first.jsonl"
    p = run(str(folder), "--out", str(first))  # --frames first is the default
    assert "3 images, 0 failed" in p.stdout, p.stdout
    got = records(first)
    assert faces(got) == {("anim.gif", 0): 0, ("pages.tif", 0): 0, ("still.jpg", None): 1}
    assert all(r["frames"] == 3 for r in got if "frame" in r)
    # Frame 0 is the same image in both jobs: same id, same result.
    every = by_frame(recs)
    for key, r in by_frame(got).items():
        assert (r["id"], r["detections"]) == (every[key]["id"], every[key]["detections"])


def test_resume_with_frames_all_carries_over_exactly_the_done_frames(folder, tmp_path,
                                                                     models_ready):
    out = tmp_path / "r.jsonl"
    args = [str(folder), "--frames", "all", "--out", str(out)]
    run(*args)
    full = by_frame(records(out))
    lines = out.read_text().splitlines()
    kept = [json.loads(x) for x in lines[:4]]
    out.write_text("\n".join(lines[:4]) + "\n" + lines[4][:50])  # as if killed mid-write
    p = run(*args, "--resume")
    assert "resumed: 4 images carried over" in p.stdout + p.stderr, p.stdout + p.stderr
    assert re.search(r"\b3 tiles\b", p.stdout), p.stdout  # only the 3 missing frames
    again = records(out)
    assert again[:4] == kept
    assert sorted(by_frame(again)) == sorted(full)  # one record per frame, none twice
    for key, r in by_frame(again).items():
        assert r["detections"] == full[key]["detections"]


def test_each_frame_is_cached_under_its_own_key(folder, tmp_path, models_ready):
    cache = f"sqlite:///{tmp_path / 'cache.db'}"
    one, two, first = (tmp_path / f"{n}.jsonl" for n in ("one", "two", "first"))
    run(str(folder), "--frames", "all", "--cache", cache, "--out", str(one))
    p = run(str(folder), "--frames", "all", "--cache", cache, "--out", str(two))
    assert "7 images, 0 failed, 7 cached, 0 tiles" in p.stdout, p.stdout
    a, b = by_frame(records(one)), by_frame(records(two))
    assert sorted(a) == sorted(b)
    for key in a:
        assert b[key]["cached"] is True
        assert b[key]["detections"] == a[key]["detections"], key
    # A job of first frames hits the entries frame 0 left (the file's own key).
    p = run(str(folder), "--cache", cache, "--out", str(first))
    assert "3 images, 0 failed, 3 cached, 0 tiles" in p.stdout, p.stdout
    hits = by_frame(records(first))  # a hit still says which frame, of how many
    assert sorted(hits) == [("anim.gif", 0), ("pages.tif", 0), ("still.jpg", None)]
    assert [r.get("frames") for _, r in sorted(hits.items())] == [3, 3, None]


def test_a_killed_worker_loses_no_frame(tmp_path, procs, models_ready):
    """Frames of several tiles each, two slow workers, one SIGKILLed once frames are done:
    its tiles are cut again from their own frame, re-read from the file."""
    d = tmp_path / "in"
    d.mkdir()
    # 6 pages of a few tiles each: a frame's tiles all go out at once, its pixels are
    # dropped, and the killed worker's tiles must be cut from the file again.
    ims = _frames((480, 360)) * 2
    ims[0].save(d / "pages.tif", save_all=True, append_images=ims[1:])
    job = ["--model", "centerface", "--tile", "256", "--frames", "all"]
    ref = tmp_path / "ref.jsonl"
    run(str(d), *job, "--out", str(ref))
    undisturbed = by_frame(records(ref))
    assert len(undisturbed) == 6 and [k[1] for k in sorted(undisturbed)] == list(range(6))

    out = tmp_path / "out.jsonl"
    _, results, events = procs.sink(out)
    tiles = ipc(tmp_path, "tiles")
    workers = [procs.start("worker", "--model", "centerface", "--tiles", tiles, "--results",
                           results, "--threads", "1", "--heartbeat", "0.5", "--id", f"w{i}",
                           "--announce", name="worker", **hold(400)) for i in range(2)]
    for w in workers:
        procs.announced(w)
    vent = procs.start("ventilate", str(d), *job, "--bind", tiles, "--sink-results", results,
                       "--sink-events", events, "--no-progress", "-v", name="ventilate")
    wait_progress(events, 2, field="images_done", alive=lambda: vent.poll() is None)
    workers[1].send_signal(signal.SIGKILL)
    assert procs.wait(vent, 240) == 0, procs.log(vent)
    log = procs.log(vent)
    assert "6 images, 0 failed" in log, log
    m = re.search(r"(\d+) images re-read to cut them", log)
    assert m and int(m.group(1)) >= 1, log[-3000:]  # frames > 0 were re-read: not frame 0
    got = by_frame(records(out))
    assert sorted(got) == sorted(undisturbed)
    for key, r in got.items():
        want = undisturbed[key]
        assert [(d["label"], round(d["score"], 4)) for d in r["detections"]] == [
            (d["label"], round(d["score"], 4)) for d in want["detections"]], key
