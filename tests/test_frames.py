"""Multi-frame files as jobs read them (``--frames first|all``): one input per frame in
order, each with its own image id and cache key, a damaged frame ending its file with that
frame's error, too many frames one ``too_large``, a re-sent tile re-reading its own frame,
and the ``zv.image`` / record fields that say which frame. Real GIF and TIFF files made
from scikit-image's photos; no processes."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from zmqvision import protocol, results
from zmqvision.inputs import ReadAhead, load_frame, load_path
from zmqvision.io import DEFAULT_MAX_PIXELS

pytestmark = pytest.mark.timeout(60)

SIZE = (96, 72)


def _photos() -> list[Image.Image]:
    return [Image.fromarray(a).convert("RGB").resize(SIZE)
            for a in (skdata.astronaut(), skdata.chelsea(), skdata.coffee())]


def _save(path, fmt: str) -> bytes:
    frames = _photos()
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:],
                   **({"duration": 50} if fmt == "GIF" else {}))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as ex:
        yield ex


def _read_all(paths, pool, **kw) -> list:
    reader = ReadAhead(paths, pool, 1, DEFAULT_MAX_PIXELS, **kw)
    out = []
    while (loaded := reader.next()) is not None:
        out.append(loaded)
    assert reader.exhausted
    return out


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_frames_all_gives_every_frame_in_order_and_first_gives_frame_0(tmp_path, pool, fmt):
    anim = tmp_path / f"anim.{fmt.lower()}"
    data = _save(anim, fmt)
    still = tmp_path / "still.png"
    _photos()[1].save(still)
    every = _read_all([str(anim), str(still), str(anim)], pool, frames="all")
    assert [(x.path[-8:], x.frame, x.frames) for x in every] == [
        (str(anim)[-8:], 0, 3), (str(anim)[-8:], 1, 3), (str(anim)[-8:], 2, 3),
        (str(still)[-8:], 0, 1),
        (str(anim)[-8:], 0, 3), (str(anim)[-8:], 1, 3), (str(anim)[-8:], 2, 3)]
    decoded = Image.open(io.BytesIO(data))
    for k in range(3):  # each frame's own pixels
        decoded.seek(k)
        want = np.asarray(decoded.convert("RGB"))
        assert np.array_equal(every[k].image.pixels, want)
    first = _read_all([str(anim), str(still)], pool)
    assert [(x.frame, x.frames) for x in first] == [(0, 3), (0, 1)]
    assert np.array_equal(first[0].image.pixels, every[0].image.pixels)


def test_each_frame_is_an_image_of_its_own_and_frame_0_keeps_the_files_id():
    h = "blake2b:" + "ab" * 32
    ids = {protocol.image_id(h, "a.gif", k) for k in range(3)}
    assert len(ids) == 3
    assert protocol.image_id(h, "a.gif", 0) == protocol.image_id(h, "a.gif")
    assert protocol.failed_image_id("a.gif", 2) != protocol.failed_image_id("a.gif")
    # The cache key: a still image's (and frame 0's) is the file's hash, as before.
    assert protocol.frame_hash(h, 0) == protocol.frame_hash(h, None) == h
    assert protocol.frame_hash(h, 2) == h + "#2"


def test_a_damaged_frame_ends_its_file_with_that_frames_error(tmp_path, pool):
    anim = tmp_path / "anim.gif"
    data = _save(anim, "GIF")
    # Cut the file inside the last frame's image data.
    anim.write_bytes(data[: len(data) - 2000])
    got = _read_all([str(anim)], pool, frames="all")
    assert [(x.frame, x.image is not None) for x in got] == [(0, True), (1, True), (2, False)]
    last = got[-1]
    assert last.error["type"] == "corrupt_image", last.error
    assert (last.frame, last.frames) == (2, 3)
    assert str(anim) in last.error["message"]


def test_too_many_frames_is_one_too_large_error(tmp_path):
    anim = tmp_path / "anim.tif"
    _save(anim, "TIFF")
    loaded = load_path(str(anim), DEFAULT_MAX_PIXELS, frames="all", max_frames=2)
    assert loaded.image is None and loaded.rest is None
    assert loaded.error["type"] == "too_large" and "more than 2 frames" in loaded.error["message"]
    assert loaded.frames == 1  # a file's error, not a frame's: its record has no frame fields


def test_a_resent_tile_rereads_its_own_frame(tmp_path):
    anim = tmp_path / "anim.gif"
    _save(anim, "GIF")
    every = list(_read_all([str(anim)], ThreadPoolExecutor(1), frames="all"))
    for k in range(3):
        again = load_frame(str(anim), k, DEFAULT_MAX_PIXELS)
        assert (again.frame, again.hash) == (k, every[k].hash)
        assert np.array_equal(again.image.pixels, every[k].image.pixels)


def test_frames_are_looked_up_in_the_cache_each_under_its_own_key(tmp_path, pool):
    anim = tmp_path / "anim.tif"
    data = _save(anim, "TIFF")
    digest = load_path(str(anim), DEFAULT_MAX_PIXELS).hash

    class Entry:
        error = None

    asked: list[str] = []
    stored = {protocol.frame_hash(digest, 1): Entry()}

    def lookup(key):
        asked.append(key)
        return stored.get(key)

    got = _read_all([str(anim)], pool, frames="all", lookup=lookup)
    assert sorted(asked) == sorted(protocol.frame_hash(digest, k) for k in range(3))
    assert [(x.frame, x.hit is not None, x.image is not None) for x in got] == [
        (0, False, True), (1, True, False), (2, False, True)]
    # Every frame cached: the file is not decoded at all (a broken body would show).
    stored.update({protocol.frame_hash(digest, k): Entry() for k in (0, 2)})
    assert data  # the same bytes; a hit for each frame
    got = _read_all([str(anim)], pool, frames="all", lookup=lookup)
    assert [(x.frame, x.hit is not None) for x in got] == [(0, True), (1, True), (2, True)]


def test_image_info_carries_the_frame_and_refuses_one_past_the_end():
    info = protocol.ImageInfo(job="j", image="i", path="a.gif", seq=0, width=4, height=3,
                              tiles=1, hash="blake2b:00", frame=2, frames=3)
    again = protocol.decode(protocol.encode(info))
    assert (again.frame, again.frames) == (2, 3)
    still = protocol.ImageInfo(job="j", image="i", path="a.png", seq=0, tiles=1)
    assert "frame" not in still.header() and "frames" not in still.header()
    assert protocol.decode(protocol.encode(still)).frames is None
    bad = protocol.ImageInfo(job="j", image="i", path="a.gif", seq=0, tiles=1, frame=3,
                             frames=3)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(protocol.encode(bad))


def test_records_say_which_frame_and_still_images_records_are_unchanged():
    kw = dict(path="a.gif", image_id="i", job="j", width=4, height=3, model="m",
              labels=[], detections=None, error=None)
    still = results.make_record(**kw)
    assert "frame" not in still and "frames" not in still
    framed = results.make_record(**kw, frame=1, frames=3)
    assert (framed["frame"], framed["frames"]) == (1, 3)
    assert {k: v for k, v in framed.items() if k not in ("frame", "frames")} == still
