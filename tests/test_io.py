"""Tests for zmqvision.io: odd and broken inputs built from real photos, and the lazy walk.

The photos are scikit-image's bundled samples (astronaut, chelsea, coffee), so nothing is
downloaded; every broken file is derived from a real encoding of them.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from zmqvision import io as zio
from zmqvision.io import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    LoadedImage,
    content_hash,
    decode_image,
    iter_image_paths,
    read_image,
)

# --------------------------------------------------------------------------- helpers


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF
    )


def _png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG header for a huge RGB image, with a tiny IDAT (a bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def _error(fn, *args, **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        fn(*args, **kw)
    return info.value


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "astronaut": skdata.astronaut(),
        "chelsea": skdata.chelsea(),
        "coffee": skdata.coffee(),
    }


@pytest.fixture(scope="module")
def astronaut_jpeg(photos) -> bytes:
    return _encode(Image.fromarray(photos["astronaut"]), "JPEG", quality=90)


# --------------------------------------------------------------------------- good files


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF", "WEBP"])
def test_supported_formats_decode_to_rgb(tmp_path, photos, fmt):
    src = photos["coffee"]
    path = tmp_path / f"coffee.{fmt.lower()}"
    path.write_bytes(_encode(Image.fromarray(src), fmt))
    img = read_image(str(path))
    assert isinstance(img, LoadedImage)
    assert img.format == fmt
    assert img.mode == "RGB"
    assert img.pixels.shape == (400, 600, 3) == (img.height, img.width, 3)
    assert img.pixels.dtype == np.uint8
    assert img.pixels.flags.c_contiguous
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless
        np.testing.assert_array_equal(img.pixels, src)
    else:
        assert np.abs(img.pixels.astype(int) - src).mean() < 6


def test_content_hash_is_blake2b_of_file_bytes(tmp_path, astronaut_jpeg):
    path = tmp_path / "a.jpg"
    path.write_bytes(astronaut_jpeg)
    img = read_image(str(path))
    assert img.content_hash == content_hash(astronaut_jpeg)
    assert img.content_hash.startswith("blake2b:") and len(img.content_hash) == 8 + 64
    assert decode_image(astronaut_jpeg).content_hash == img.content_hash


def test_pixels_are_read_only(astronaut_jpeg):
    img = decode_image(astronaut_jpeg)
    with pytest.raises(ValueError):
        img.pixels[0, 0, 0] = 1


def test_one_by_one_image():
    img = decode_image(_encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))
    assert img.pixels.shape == (1, 1, 3)
    assert img.pixels[0, 0].tolist() == [10, 200, 30]


def test_cmyk_jpeg(photos):
    data = _encode(Image.fromarray(photos["chelsea"]).convert("CMYK"), "JPEG", quality=95)
    img = decode_image(data)
    assert img.mode == "CMYK"
    assert img.pixels.shape == (300, 451, 3)
    assert np.abs(img.pixels.astype(int) - photos["chelsea"]).mean() < 8


def test_16_bit_png_scales_not_clips():
    a = np.array([[65535, 32768, 256, 255, 0]], dtype=np.uint16)
    img = decode_image(_encode(Image.fromarray(a), "PNG"))
    assert img.mode.startswith("I;16")
    assert img.pixels[0, :, 0].tolist() == [255, 128, 1, 0, 0]
    assert (img.pixels == img.pixels[:, :, :1]).all()  # gray replicated


def test_32_bit_int_and_float_tiff():
    ints = np.array([[65535, 32768, 70000, -5]], dtype=np.int32)
    img = decode_image(_encode(Image.fromarray(ints), "TIFF"))
    assert img.mode == "I"
    assert img.pixels[0, :, 0].tolist() == [255, 128, 255, 0]

    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    img = decode_image(_encode(Image.fromarray(floats), "TIFF"))
    assert img.mode == "F"
    assert img.pixels[0, :, 0].tolist() == [0, 128, 255]


def test_grayscale_replicated(photos):
    gray = Image.fromarray(photos["coffee"]).convert("L")
    img = decode_image(_encode(gray, "PNG"))
    assert img.mode == "L"
    for c in range(3):
        np.testing.assert_array_equal(img.pixels[:, :, c], np.asarray(gray))


def test_rgba_composited_over_black(photos):
    rgb = photos["chelsea"][:64, :64]
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :16] = 0
    alpha[:, 16:32] = 128
    im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    img = decode_image(_encode(im, "PNG"))
    assert img.mode == "RGBA"
    assert (img.pixels[:, :16] == 0).all()
    np.testing.assert_array_equal(img.pixels[:, 32:], rgb[:, 32:])
    half = img.pixels[:, 16:32].astype(int)
    assert np.abs(half - rgb[:, 16:32].astype(int) * 128 / 255).max() <= 1


def test_palette_png(photos):
    pal = Image.fromarray(photos["coffee"]).convert("P", palette=Image.Palette.ADAPTIVE)
    img = decode_image(_encode(pal, "PNG"))
    assert img.mode == "P"
    np.testing.assert_array_equal(img.pixels, np.asarray(pal.convert("RGB")))


def test_exif_orientation_applied(photos):
    src = Image.fromarray(photos["chelsea"])  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = decode_image(_encode(src, "JPEG", quality=95, exif=exif.tobytes()))
    plain = decode_image(_encode(src, "JPEG", quality=95))
    assert (plain.width, plain.height) == (451, 300)
    assert (rotated.width, rotated.height) == (300, 451)
    assert rotated.pixels.shape == (451, 300, 3)
    np.testing.assert_array_equal(rotated.pixels, np.rot90(plain.pixels, k=-1))


# --------------------------------------------------------------------------- bad files


def test_not_found(tmp_path):
    err = _error(read_image, str(tmp_path / "missing.jpg"))
    assert err.type == "not_found"
    assert "missing.jpg" in err.message


def test_directory_is_unreadable(tmp_path):
    err = _error(read_image, str(tmp_path))
    assert err.type == "unreadable"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path, astronaut_jpeg):
    path = tmp_path / "locked.jpg"
    path.write_bytes(astronaut_jpeg)
    path.chmod(0)
    try:
        assert _error(read_image, str(path)).type == "unreadable"
    finally:
        path.chmod(0o644)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    err = _error(read_image, str(path))
    assert err.type == "empty_file"
    assert "empty.jpg" in err.message


def test_truncated_jpeg_is_corrupt_not_grey(tmp_path, astronaut_jpeg):
    path = tmp_path / "half.jpg"
    path.write_bytes(astronaut_jpeg[: len(astronaut_jpeg) // 2])
    err = _error(read_image, str(path))
    assert err.type == "corrupt_image"
    assert "half.jpg" in err.message and "truncated" in err.message


def test_truncated_png_is_corrupt(photos):
    png = _encode(Image.fromarray(photos["astronaut"]), "PNG")
    assert _error(decode_image, png[: len(png) // 2]).type == "corrupt_image"


def test_damaged_header_of_supported_format_is_corrupt(astronaut_jpeg):
    assert _error(decode_image, astronaut_jpeg[:10]).type == "corrupt_image"
    assert _error(decode_image, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).type == "corrupt_image"


def test_random_bytes_named_jpg(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    err = _error(read_image, str(path))
    assert err.type == "unsupported_format"
    assert "noise.jpg" in err.message


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not pixels\n" * 50)
    err = _error(read_image, str(path))
    assert err.type == "unsupported_format"
    assert "text" in err.message


def test_unsupported_format_is_named(tmp_path, photos):
    path = tmp_path / "cat.ppm"
    path.write_bytes(_encode(Image.fromarray(photos["chelsea"]), "PPM"))
    err = _error(read_image, str(path))
    assert err.type == "unsupported_format"
    assert "PPM" in err.message and "JPEG" in err.message and "GIF" in err.message


def test_huge_declared_png_rejected_fast(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(30000, 30000))
    assert path.stat().st_size < 200
    t0 = time.perf_counter()
    err = _error(read_image, str(path))
    assert time.perf_counter() - t0 < 0.5
    assert err.type == "too_large"
    assert "bomb.png" in err.message


def test_huge_png_rejected_by_our_check_without_pillow_limit(monkeypatch):
    # With Pillow's own guard off, our header check must still stop it before decoding.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    t0 = time.perf_counter()
    err = _error(decode_image, _png_declaring(30000, 30000), name="bomb.png")
    assert time.perf_counter() - t0 < 0.5
    assert err.type == "too_large"
    assert "30000×30000" in err.message


def test_between_pillow_warning_and_our_limit_no_warning(tmp_path):
    # 12000×12000 is above Pillow's warning threshold but below its error threshold: our
    # check (100 M) decides. A fresh interpreter with warnings as errors shows the module's
    # import-time filter keeps Pillow's warning out (pytest resets filters per test).
    path = tmp_path / "big.png"
    path.write_bytes(_png_declaring(12000, 12000))
    code = (
        "import sys\n"
        "from zmqvision.io import read_image, ImageError\n"
        "try:\n    read_image(sys.argv[1])\n"
        "except ImageError as e:\n    print(e.type, e.message)\n"
    )
    out = subprocess.run([sys.executable, "-W", "error", "-c", code, str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("too_large") and f"{DEFAULT_MAX_PIXELS:,}" in out.stdout


def test_max_pixels_is_per_call(astronaut_jpeg):
    err = _error(decode_image, astronaut_jpeg, max_pixels=512 * 512 - 1)
    assert err.type == "too_large"
    assert decode_image(astronaut_jpeg, max_pixels=512 * 512).width == 512


def test_memory_error_becomes_too_large(monkeypatch, astronaut_jpeg):
    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(zio, "_to_rgb", boom)
    assert _error(decode_image, astronaut_jpeg).type == "too_large"


def test_image_error_pickles():
    err = pickle.loads(pickle.dumps(ImageError("corrupt_image", "x.jpg: damaged")))
    assert (err.type, err.message) == ("corrupt_image", "x.jpg: damaged")
    assert str(err) == "corrupt_image: x.jpg: damaged"


# --------------------------------------------------------------------------- paths


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_iter_is_a_lazy_iterator(tmp_path):
    walk = iter_image_paths([str(tmp_path)])
    assert iter(walk) is walk and not isinstance(walk, (list, tuple))


def test_walk_skips_hidden_and_takes_image_extensions(tmp_path):
    for rel in ["a.jpg", "b.PNG", "c.txt", ".hidden.jpg", ".git/x.jpg", "sub/d.jpeg",
                "sub/deeper/e.jpg", "noext", "f.gif"]:
        _touch(tmp_path / rel)
    top = str(tmp_path)
    walk = iter_image_paths([top])
    found = set(walk)
    assert found == {os.path.join(top, r) for r in
                     ["a.jpg", "b.PNG", "sub/d.jpeg", "sub/deeper/e.jpg", "f.gif"]}
    assert walk.skipped == 2  # c.txt, noext; hidden names are not counted
    assert sorted(walk.skipped_examples) == [os.path.join(top, "c.txt"),
                                             os.path.join(top, "noext")]
    everything = set(iter_image_paths([top], extensions=zio.ALL_EXTENSIONS))
    assert everything == found | {os.path.join(top, "c.txt"), os.path.join(top, "noext")}
    assert set(iter_image_paths([top], extensions="*")) == everything
    filtered = iter_image_paths([top], extensions=frozenset({"jpg", "png"}))
    assert set(filtered) == {os.path.join(top, r) for r in
                             ["a.jpg", "b.PNG", "sub/deeper/e.jpg"]}
    assert filtered.skipped == 4
    flat = set(iter_image_paths([top], recursive=False))
    assert flat == {os.path.join(top, r) for r in ["a.jpg", "b.PNG", "f.gif"]}


def test_explicit_files_yielded_as_given(tmp_path):
    _touch(tmp_path / ".hidden.jpg")
    given = [str(tmp_path / "missing.jpg"), str(tmp_path / ".hidden.jpg"), "notes.txt"]
    assert list(iter_image_paths(given, extensions=frozenset({"png"}))) == given
    assert list(iter_image_paths(given)) == given  # image extensions are for folders only


def test_relative_paths_stay_relative(tmp_path, monkeypatch):
    _touch(tmp_path / "imgs" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    assert list(iter_image_paths(["imgs"])) == [os.path.join("imgs", "a.jpg")]
    assert list(iter_image_paths(["imgs/"])) == ["imgs/a.jpg"]


def test_symlink_loop_terminates(tmp_path):
    root = tmp_path / "root"
    _touch(root / "a.jpg")
    _touch(root / "sub" / "b.jpg")
    os.symlink(root, root / "sub" / "loop")
    os.symlink(root / "a.jpg", root / "link.jpg")  # file symlinks are still yielded
    t0 = time.perf_counter()
    found = sorted(iter_image_paths([str(root)]))
    assert time.perf_counter() - t0 < 2
    assert found == sorted(str(root / r) for r in ["a.jpg", "sub/b.jpg", "link.jpg"])


def test_first_path_of_a_huge_directory_comes_without_listing_it(tmp_path, monkeypatch):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(20_000):
        (big / f"{i:05d}.jpg").touch()

    pulled = 0
    real_scandir = os.scandir

    class Counting:
        def __init__(self, path):
            self._it = real_scandir(path)

        def __iter__(self):
            return self

        def __next__(self):
            nonlocal pulled
            entry = next(self._it)
            pulled += 1
            return entry

        def close(self):
            self._it.close()

    def no_listing(*a, **k):
        raise AssertionError("directory listed into memory")

    monkeypatch.setattr(os, "scandir", Counting)
    monkeypatch.setattr(os, "listdir", no_listing)
    gen = iter_image_paths([str(big)])
    t0 = time.perf_counter()
    first = next(gen)
    assert time.perf_counter() - t0 < 0.1
    assert first.startswith(str(big)) and pulled <= 5
    gen.close()
    monkeypatch.undo()
    assert sum(1 for _ in iter_image_paths([str(big)])) == 20_000


# --------------------------------------------------------------------------- reduced decode


def _big_jpeg(photos, exif: bytes | None = None) -> bytes:
    big = Image.fromarray(photos["chelsea"]).resize((1804, 1200))  # 4x chelsea
    return _encode(big, "JPEG", quality=92, **({"exif": exif} if exif else {}))


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_a_jpeg_is_decoded_reduced_when_every_tile_allows_it(photos, factor):
    data = _big_jpeg(photos)
    asked = []
    img = decode_image(data, reduce=lambda w, h: asked.append((w, h)) or factor)
    full = decode_image(data)
    assert asked == [(1804, 1200)]  # the displayed size, from the header
    assert (img.width, img.height, img.reduced) == (1804, 1200, factor)
    assert img.pixels.shape == (-(-1200 // factor), -(-1804 // factor), 3)
    # The same picture: the full decode shrunk the same way differs only by resampling.
    shrunk = np.asarray(Image.fromarray(full.pixels).resize(img.pixels.shape[1::-1],
                                                            Image.BOX), np.int16)
    assert np.abs(shrunk - img.pixels).mean() < 4
    assert img.content_hash == full.content_hash


def test_reduced_decode_sees_the_exif_orientation(photos):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    asked = []
    img = decode_image(_big_jpeg(photos, exif.tobytes()),
                       reduce=lambda w, h: asked.append((w, h)) or 4)
    assert asked == [(1200, 1804)]
    assert (img.width, img.height, img.reduced) == (1200, 1804, 4)
    assert img.pixels.shape == (451, 300, 3)


def test_no_reduction_for_other_formats_or_a_factor_of_one(photos):
    png = _encode(Image.fromarray(photos["chelsea"]).resize((1804, 1200)), "PNG")
    for data, factor in ((png, 4), (_big_jpeg(photos), 1)):
        img = decode_image(data, reduce=lambda w, h, f=factor: f)
        assert (img.reduced, img.pixels.shape) == (1, (1200, 1804, 3))


def test_a_small_jpeg_reports_the_decoder_scale_not_the_size_ratio(photos):
    """20 px at 1/8 is 3 px wide (the last block is partial): the factor is still 8, which
    is what maps tile boxes onto the reduced pixels."""
    tiny = _encode(Image.fromarray(photos["chelsea"]).resize((20, 36)), "JPEG", quality=92)
    img = decode_image(tiny, reduce=lambda w, h: 8)
    assert (img.reduced, img.pixels.shape, img.width, img.height) == (8, (5, 3, 3), 20, 36)
