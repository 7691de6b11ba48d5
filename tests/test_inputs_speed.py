"""The ventilator's per-image shortcuts keep what they replace: RGB pixels packed in one
call equal Pillow's own (every orientation, one band or many), a read-ahead that wakes
its loop only when asked still wakes it for every input it waits for, and a tile plan
kept per image size is the plan made afresh."""

from __future__ import annotations

import io as pyio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from zmqvision import io as zio
from zmqvision.inputs import ReadAhead
from zmqvision.plan import JobPlan, JobSettings


def _jpeg(size=(173, 91), orientation: int = 1, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(orientation)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = pyio.BytesIO()
    im.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def _reference(data: bytes) -> np.ndarray:
    """What Pillow gives, the way anyone would ask it: transposed, converted, asarray."""
    with Image.open(pyio.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("banded", [False, True])
def test_rgb_pixels_equal_pillows(monkeypatch, orientation, banded):
    if banded:  # a few rows per band: the band-by-band path, as for a large image
        monkeypatch.setattr(zio, "_BAND_BYTES", 173 * 4 * 7)
    data = _jpeg(orientation=orientation)
    px = zio.decode_image(data).pixels
    assert np.array_equal(px, _reference(data))
    assert px.dtype == np.uint8 and px.flags.c_contiguous and not px.flags.writeable


def test_grey_and_cmyk_still_converted():
    for mode in ("L", "CMYK"):
        data = _jpeg(mode=mode)
        assert np.array_equal(zio.decode_image(data).pixels, _reference(data))


def test_read_ahead_wakes_the_loop_that_asked(tmp_path: Path):
    """ready() found nothing: the load that finishes wakes the loop, every time. (Loads
    finishing while the loop asked for nothing also wake it: waking only a loop that
    asked saved 0.1 ms a image but left the loop asleep in its 20 ms poll while decoded
    images and credit waited, 8 % fewer images/s with one worker.)"""
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(orientation=1 + i % 8))
    woke = threading.Event()
    wakes: list[int] = []

    def on_ready() -> None:
        wakes.append(1)
        woke.set()

    paths = sorted(str(p) for p in tmp_path.glob("*.jpg"))
    with ThreadPoolExecutor(2) as pool:
        reader = ReadAhead(paths, pool, 1, zio.DEFAULT_MAX_PIXELS, on_ready=on_ready)
        for f in list(reader._pending):
            f.result(timeout=30)
        got = []
        while len(got) < len(paths):
            woke.clear()
            loaded = reader.ready()
            if loaded is None:  # as the engine does: wait for the wake, then ask again
                assert woke.wait(30), "a load finished and the loop was not woken"
                continue
            got.append(loaded.path)
        assert got == paths and reader.ready() is None and reader.exhausted
        reader.close()


def test_tile_plan_kept_per_size_is_the_fresh_plan():
    plan = JobPlan(JobSettings(model="centerface"))
    first = plan.tiles(4000, 3000)
    assert plan.tiles(4000, 3000) is first  # planned once for that size
    assert first == plan.task.plan(4000, 3000, plan.scales, plan.settings.overlap,
                                   plan.spec.input_size)
    reduce = plan.reducer()
    fresh = plan.task.reducer(plan.scales, plan.settings.overlap, plan.spec.input_size)
    for size in ((4000, 3000), (640, 480), (8000, 8000), (4000, 3000)):
        assert reduce(*size) == fresh(*size)
