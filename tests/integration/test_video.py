"""Video through the real pipeline (processes, sockets, CenterFace): a clip made from real
photos gives one record per sampled frame with its index and time, and the same
detections as those frames saved as PNG images; a camera faster than the pool, with
drop-oldest, stays within its queue and its lag, and counts what it dropped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.test_video import make_clip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", *args, "--no-progress",
                        "--no-cache"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def records(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def boxes(rec: dict) -> list:
    return sorted((d["label"], [round(v, 3) for v in d["box"]], round(d["score"], 4))
                  for d in rec["detections"])


def test_clip_gives_a_record_per_sampled_frame_equal_to_its_png(tmp_path, models_ready):
    clip = tmp_path / "clip.mp4"
    decoded = make_clip(clip, size=(640, 480))
    out = tmp_path / "video.jsonl"
    p = run(str(clip), "--fps", "2", "--out", str(out))
    assert "6 images, 0 failed" in p.stdout, p.stdout
    recs = sorted(records(out), key=lambda r: r["frame"])
    assert [(r["frame"], r["frames"], r["time"]) for r in recs] == [
        (k, 30, k / 10) for k in (0, 5, 10, 15, 20, 25)]
    assert len({r["id"] for r in recs}) == 6 and all(r["error"] is None for r in recs)

    pngs = tmp_path / "png"
    pngs.mkdir()
    for k in (0, 5, 10, 15, 20, 25):
        Image.fromarray(decoded[k]).save(pngs / f"f{k:02d}.png")
    out_png = tmp_path / "png.jsonl"
    run(str(pngs), "--out", str(out_png))
    as_png = {int(r["image"].rsplit("/f", 1)[1][:2]): r for r in records(out_png)}
    for r in recs:
        assert boxes(r) == boxes(as_png[r["frame"]]), r["frame"]
    assert any(r["detections"] for r in recs)  # the astronaut's face is found


def test_a_camera_faster_than_the_pool_drops_the_oldest_within_bounds(tmp_path,
                                                                      models_ready):
    """Two cameras of 1920x1080 at 30 frames/s (one clip read twice at its pace, --live)
    into a queue of 2: the pool cannot keep up on these CPUs, so frames are dropped,
    counted, and every frame read is either recognised or dropped; the queue never grows
    past 2 and the lag stays bounded. (Two readers of one source give frames of equal path
    and index: each is still an image of its own.)"""
    import zmqvision
    from zmqvision.follow import LiveInputs
    from zmqvision.ventilator import VentilateConfig

    clip = tmp_path / "cam.mp4"
    make_clip(clip, size=(1920, 1080), frames=45, rate=30)
    lags: list[float] = []
    live = LiveInputs([], streams=[str(clip)] * 2, when_behind="drop-oldest", limit=2)
    live.configure(realtime=True)
    with zmqvision.Pool(model="centerface", workers=1, cache=None) as pool:
        done = pool.run_files(VentilateConfig(cache=None, timeout=200), paths=live,
                              on_progress=lambda p: lags.append(p.lag or 0.0))
    assert [r.frames_read for r in live.readers] == [45, 45]
    assert live.dropped > 0  # the pool was behind
    assert done.images + live.dropped == 90  # each frame recognised or counted as dropped
    assert done.failed == 0
    assert live.arrivals.most <= 2  # bounded: never more than the queue waiting
    assert lags and max(lags) < 20.0, lags


def test_identify_names_faces_per_frame_as_in_the_frames_saved_as_png(tmp_path,
                                                                     models_ready):
    """Issue 23's cameras with issue 21's second stage: `run clip.mp4 --fps 2 --identify`
    gives each sampled frame its faces' names, the same as those frames saved as PNG."""
    from tests.faces_samples import astronaut
    from zmqvision.faces.embed import FaceEmbedder
    from zmqvision.faces.gallery import Gallery
    from zmqvision.faces.identify import largest_face_embedding
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    url = f"sqlite://{tmp_path / 'faces.sqlite3'}"
    emb, _ = largest_face_embedding(astronaut(), Detector(resolve("centerface"), threads=2),
                                    FaceEmbedder(threads=2))
    gallery = Gallery.open(url)
    gallery.enroll("Eileen Collins", emb[None], {"photos": ["astronaut"]})
    gallery.close()
    clip = tmp_path / "clip.mp4"
    decoded = make_clip(clip, size=(640, 480))
    out = tmp_path / "video.jsonl"
    run(str(clip), "--fps", "2", "--identify", "--gallery", url, "--out", str(out))
    recs = sorted(records(out), key=lambda r: r["frame"])
    assert [r["frame"] for r in recs] == [0, 5, 10, 15, 20, 25]

    pngs = tmp_path / "png"
    pngs.mkdir()
    for k in (0, 5, 10, 15, 20, 25):
        Image.fromarray(decoded[k]).save(pngs / f"f{k:02d}.png")
    out_png = tmp_path / "png.jsonl"
    run(str(pngs), "--identify", "--gallery", url, "--out", str(out_png))
    as_png = {int(r["image"].rsplit("/f", 1)[1][:2]): r for r in records(out_png)}

    def names(rec):
        return sorted((d["identity"] or {}).get("name") or "" for d in rec["detections"])

    for r in recs:
        assert names(r) == names(as_png[r["frame"]]), r["frame"]
    # Frames 0 and 5 show the astronaut (the clip's first photo), named; the cat and the
    # coffee frames name nobody.
    assert names(recs[0]) == ["Eileen Collins"] and names(recs[1]) == ["Eileen Collins"]
    assert all("Eileen Collins" not in names(r) for r in recs[2:])
