"""zmqvision.video without the pipeline: frames sampled by time, files read lazily as a
chain of frames (ids and cache keys as for multi-frame images), and a video given without
PyAV is a usage error that says how to install it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from zmqvision import protocol
from zmqvision.video import Sampler, is_stream, is_video

pytestmark = pytest.mark.timeout(60)


def make_clip(path, size=(160, 120), frames=30, rate=10) -> list[np.ndarray]:
    """A small H.264 clip of three real photos (10 frames each); the frames as decoded."""
    av = pytest.importorskip("av")
    from PIL import Image
    from skimage import data

    photos = [np.asarray(Image.fromarray(getattr(data, n)()).convert("RGB").resize(size))
              for n in ("astronaut", "chelsea", "coffee")]
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    stream.options = {"crf": "12", "preset": "ultrafast"}
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(photos[min(i * 3 // frames, 2)], format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    with av.open(str(path)) as clip:
        return [f.to_ndarray(format="rgb24") for f in clip.decode(video=0)]


def test_sampler_takes_the_first_frame_at_or_after_each_tick():
    s = Sampler(2.0)
    times = [i / 10 for i in range(30)]
    assert [t for t in times if s.take(t)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    every = Sampler(None)
    assert all(every.take(t) for t in times)
    slow = Sampler(4.0)  # faster sampling than the video: every frame, once
    assert [t for t in (0.0, 1.0, 2.0) if slow.take(t)] == [0.0, 1.0, 2.0]


def test_sources():
    assert is_stream("rtsp://cam.local/stream1") and is_stream("/dev/video0")
    assert is_video("clip.MP4") and not is_video("photo.jpg") and not is_stream("clip.mp4")


def test_a_file_is_a_lazy_chain_of_sampled_frames(tmp_path):
    from zmqvision import io
    from zmqvision.inputs import load_frame, load_path

    clip = tmp_path / "clip.mp4"
    decoded = make_clip(clip)
    first = load_path(str(clip), io.DEFAULT_MAX_PIXELS, fps=2.0)
    chain = [first, *first.rest]
    assert [(x.frame, x.frames, x.time) for x in chain] == [
        (k, 30, k / 10) for k in (0, 5, 10, 15, 20, 25)]
    digest = first.hash
    assert digest.startswith("blake2b:") and all(x.hash == digest for x in chain)
    for x in chain:
        assert np.array_equal(x.image.pixels, decoded[x.frame])
    again = load_frame(str(clip), 15, io.DEFAULT_MAX_PIXELS)  # a tile sent again
    assert again.image.content_hash == digest
    assert np.array_equal(again.image.pixels, decoded[15])
    assert protocol.image_id(digest, str(clip), 5) != protocol.image_id(digest, str(clip), 0)


def test_a_damaged_video_is_an_error_record_not_a_crash(tmp_path):
    from zmqvision import io
    from zmqvision.inputs import load_path

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 4096)
    loaded = load_path(str(bad), io.DEFAULT_MAX_PIXELS)
    assert loaded.image is None and loaded.error["type"] in ("unreadable", "corrupt_image")


def test_video_without_pyav_says_how_to_install_it(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read")
    code = ("import sys; sys.modules['av'] = None; from zmqvision.cli import main; "
            f"sys.argv = ['zmqvision', 'run', {str(clip)!r}, '--no-progress']; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "pip install 'zmqvision[video]'" in p.stderr
