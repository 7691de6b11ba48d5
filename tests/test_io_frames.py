"""Tests for zmqvision.io's decoding limits: multi-frame files (animated GIF/PNG/WebP,
multi-page TIFF), a size check for every frame before it is allocated, memory bounded
while converting, EXIF orientation without a second copy, and truncated JPEGs refused.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skdata

from zmqvision import io as zio
from zmqvision.io import ImageError, decode_frames, decode_image, read_image

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _animation(fmt: str, size=(40, 30), colours=COLOURS, **kw) -> bytes:
    frames = [Image.new("RGB", size, c) for c in colours]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)


def _error(fn, *args, **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        fn(*args, **kw)
    return info.value


def _centre(img: zio.LoadedImage) -> tuple[int, ...]:
    return tuple(int(v) for v in img.pixels[img.height // 2, img.width // 2])


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize("fmt,kw", [("GIF", {"duration": 50}), ("PNG", {"duration": 50}),
                                    ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_multi_frame_files_give_the_first_frame_and_say_how_many(fmt, kw):
    data = _animation(fmt, **kw)
    assert Image.open(io.BytesIO(data)).n_frames == 3  # what Pillow itself counts
    img = decode_image(data, name=f"anim.{fmt.lower()}")
    assert (img.format, img.frame, img.frames) == (fmt, 0, 3)
    assert img.pixels.shape == (30, 40, 3)
    assert _centre(img) == COLOURS[0]
    frames = list(decode_frames(data, frames="all"))
    assert [(f.frame, f.frames) for f in frames] == [(0, 3), (1, 3), (2, 3)]
    assert [_centre(f) for f in frames] == COLOURS
    assert len({f.content_hash for f in frames}) == 1  # the file's hash, for every frame
    assert [f.frame for f in decode_frames(data)] == [0]


def test_a_gif_file_is_read(tmp_path):
    path = tmp_path / "cat.gif"
    path.write_bytes(_encode(Image.fromarray(skdata.chelsea()), "GIF"))
    img = read_image(str(path))
    assert (img.format, img.width, img.height, img.frames) == ("GIF", 451, 300, 1)
    # a 256-colour palette of the photo: close to it, not equal
    assert np.abs(img.pixels.astype(int) - skdata.chelsea()).mean() < 12


def test_still_images_are_one_frame():
    img = decode_image(_encode(Image.new("RGB", (8, 8)), "JPEG"))
    assert (img.frame, img.frames) == (0, 1)


def test_frames_all_refuses_more_than_max_frames():
    data = _animation("GIF")
    err = _error(lambda: list(decode_frames(data, frames="all", max_frames=2, name="a.gif")))
    assert err.type == "too_large" and "a.gif" in err.message
    assert decode_image(data).frames == 3  # the first frame alone is fine


def test_frames_mode_is_checked():
    with pytest.raises(ValueError):
        next(decode_frames(_animation("GIF"), frames="some"))


def test_tiff_pages_of_different_sizes_each_checked():
    small, big = Image.new("RGB", (10, 10), COLOURS[0]), Image.new("RGB", (100, 100))
    data = _encode(small, "TIFF", save_all=True, append_images=[big])
    gen = decode_frames(data, frames="all", max_pixels=500, name="pages.tif")
    first = next(gen)
    assert (first.width, first.frames) == (10, 2)
    err = _error(next, gen)
    assert err.type == "too_large" and "frame 1" in err.message


def test_a_tiff_whose_pages_loop_still_ends():
    data = bytearray(_encode(Image.new("RGB", (4, 4)), "TIFF"))
    first_ifd = struct.unpack_from("<I", data, 4)[0]
    entries = struct.unpack_from("<H", data, first_ifd)[0]
    struct.pack_into("<I", data, first_ifd + 2 + 12 * entries, first_ifd)  # next = itself
    t0 = time.perf_counter()
    assert decode_image(bytes(data)).frames == 1
    assert time.perf_counter() - t0 < 1


def _gif_growing_to(width: int, height: int) -> bytes:
    """A 2-frame 10×10 GIF whose second frame's descriptor claims width×height: Pillow
    grows the canvas to it as it seeks (and allocates for it) unless we check first."""
    a = Image.new("P", (10, 10), 0)
    b = Image.new("P", (10, 10), 1)
    for im in (a, b):
        im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    data = bytearray(_encode(a, "GIF", save_all=True, append_images=[b], duration=50))
    desc = b"\x2c" + struct.pack("<HHHH", 0, 0, 10, 10)
    second = data.rindex(desc)
    assert second != data.index(desc)
    struct.pack_into("<HH", data, second + 5, width, height)
    return bytes(data)


def test_a_gif_frame_growing_the_canvas_is_checked_before_seeking():
    # 12000×12000 is above our limit but below Pillow's own error threshold: without
    # our check Pillow would allocate a 144 MP canvas for frame 1.
    data = _gif_growing_to(12000, 12000)
    assert decode_image(data).frames == 2  # frame 0 is fine
    gen = decode_frames(data, frames="all", name="grow.gif")
    assert next(gen).frame == 0
    t0 = time.perf_counter()
    err = _error(next, gen)
    assert time.perf_counter() - t0 < 0.5
    assert err.type == "too_large" and "12000×12000" in err.message and "frame 1" in err.message


def test_a_gif_canvas_too_large_is_refused_from_the_header():
    data = bytearray(_encode(Image.new("P", (10, 10)), "GIF"))
    struct.pack_into("<HH", data, 6, 12000, 12000)  # the logical screen
    err = _error(decode_image, bytes(data), name="wide.gif")
    assert err.type == "too_large" and "wide.gif" in err.message


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation):
    src = Image.fromarray(skdata.chelsea()[:60, :90])  # not square: swaps show
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(src, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    img = decode_image(data)
    np.testing.assert_array_equal(img.pixels, expected)
    assert (img.height, img.width) == expected.shape[:2]
    assert img.pixels.flags.c_contiguous and not img.pixels.flags.writeable


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_conversion_holds_one_output_not_copies_of_the_image(mode, monkeypatch):
    """Python-side allocations while decoding (numpy and bytes; Pillow's own image memory
    is not traced) stay at the output plus a band, whatever the mode: whole-image
    conversion held two or three more image-sized buffers (the 99 MP PNG at 1.3-2 GB)."""
    monkeypatch.setattr(zio, "_BAND_BYTES", 1 << 20)
    w, h = 2000, 1500
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (h, w, len(mode)), np.uint8).squeeze()
    data = _encode(Image.fromarray(pixels, mode), "PNG", compress_level=1)
    out_bytes = w * h * 3
    tracemalloc.start()
    try:
        img = decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert img.pixels.nbytes == out_bytes
    assert peak < out_bytes + 12 * (1 << 20), (peak, out_bytes)


# --------------------------------------------------------------------------- truncation


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    big = Image.fromarray(skdata.astronaut()).resize((1024, 1024))
    return {"baseline": _encode(big, "JPEG", quality=90),
            "progressive": _encode(big, "JPEG", quality=90, progressive=True)}


@pytest.mark.parametrize("kind", ["baseline", "progressive"])
@pytest.mark.parametrize("cut", ["half", "end-marker-only", "last-kb", "zero-filled"])
@pytest.mark.parametrize("reduce", [None, 8])
def test_a_truncated_jpeg_is_corrupt_never_a_success(jpegs, kind, cut, reduce):
    """A file cut by a crash, a full disk or an aborted copy must be an error record (so
    it is never cached as a success), also when decoded reduced (fewer scanlines read)."""
    data = jpegs[kind]
    cuts = {"half": data[: len(data) // 2], "end-marker-only": data[:-2],
            "last-kb": data[:-1024],
            "zero-filled": data[: len(data) // 2] + bytes(len(data) - len(data) // 2)}
    err = _error(decode_image, cuts[cut], name="cut.jpg",
                 reduce=(lambda w, h: reduce) if reduce else None)
    assert err.type == "corrupt_image" and "cut.jpg" in err.message


# --------------------------------------------------------------------------- junk


def test_a_jpeg_signature_followed_by_megabytes_of_junk_is_refused_quickly():
    """Pillow steps over junk between JPEG markers one byte per Python loop (a 256 MiB
    file held a decode thread for a minute); we refuse more than 1 MiB of it at C speed."""
    for filler in (b"\x00", b"\xff"):
        data = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + filler * (64 << 20)
        t0 = time.perf_counter()
        err = _error(decode_image, data, name="junk.jpg")
        assert time.perf_counter() - t0 < 2
        assert err.type == "corrupt_image" and "junk.jpg" in err.message


def test_real_jpegs_pass_the_marker_walk():
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = Image.fromarray(skdata.astronaut())
    for kw in ({}, {"progressive": True}, {"exif": exif.tobytes()},
               {"icc_profile": b"\x00" * 200_000}, {"comment": b"x" * 60_000}):
        assert decode_image(_encode(photo, "JPEG", **kw)).format == "JPEG"
    cmyk = _encode(photo.convert("CMYK"), "JPEG")
    assert decode_image(cmyk).mode == "CMYK"
    end = 4 + struct.unpack_from(">H", cmyk, 4)[0]  # after the first segment
    assert decode_image(cmyk[:end] + b"\x00" * 1000 + cmyk[end:]).width == 512  # some junk
