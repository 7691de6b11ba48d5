"""Make a large photo with many small faces, and its ground truth, to show why tiling matters.

A face detector with a 640×640 input sees a 4000×3000 photo shrunk 6.25 times: a 60 px
face becomes 10 px and is mostly missed. Cut into 640 px tiles at native scale, the same
faces are easy. This script builds such a photo from real pictures (scikit-image's
samples, see LICENSES.md): the astronaut's face, with some head around it, pasted at random
sizes and non-overlapping positions over a background tiled from photos without faces
(coffee, rocket, chelsea the cat). It writes the JPEG and ``examples/truth/<name>.json``::

    {"image": "mosaic.jpg", "width": 4000, "height": 3000, "faces": [[x1, y1, x2, y2], ...]}

where each box is the face itself (forehead to chin, as face detectors draw it), not the
pasted patch. The same seed always gives the same image.

    python examples/make_mosaic.py --out examples/images/mosaic.jpg --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from skimage import data as skdata

# The astronaut's face in skimage.data.astronaut() (512×512), as CenterFace boxes it
# (score 0.93): about 88 px wide, 116 px from forehead to chin.
FACE_BOX = (182.0, 62.0, 270.0, 178.0)
# The pasted patch is this many face sizes across (hair, neck, some suit). Its edge is
# feathered away, so about 1.6 face sizes stay solid; at 1.6 the feather ate into the face
# and CenterFace scores fell to 0.57 (2.0: all >= 0.77 over seeds 0-1).
CONTEXT = 2.0
BACKGROUNDS = ("coffee", "rocket", "chelsea")  # real photos with no human faces


def _face_patch() -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Crop the astronaut's head with context; return it and the face box inside it."""
    img = Image.fromarray(skdata.astronaut())
    x1, y1, x2, y2 = FACE_BOX
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = (x2 - x1) * CONTEXT / 2, (y2 - y1) * CONTEXT / 2
    left, top = max(0, round(cx - hw)), max(0, round(cy - hh))
    right, bottom = min(img.width, round(cx + hw)), min(img.height, round(cy + hh))
    patch = img.crop((left, top, right, bottom))
    return patch, (x1 - left, y1 - top, x2 - left, y2 - top)


def tile_canvas(width: int, height: int, rng: np.random.Generator,
                photos: Sequence[Image.Image], row_height: tuple[int, int],
                blur: float) -> Image.Image:
    """Tile a canvas with rows of randomly chosen, scaled and flipped photos (each row
    ``row_height`` px tall, drawn from that range), the seams softened by ``blur`` so tile
    edges are not the sharpest lines in the picture. benchmarks/min_size.py uses it too."""
    canvas = Image.new("RGB", (width, height))
    y = 0
    while y < height:
        row_h = int(rng.integers(*row_height))
        x = 0
        while x < width:
            photo = photos[int(rng.integers(len(photos)))]
            w = round(photo.width * row_h / photo.height)
            tile = photo.resize((w, row_h), Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            canvas.paste(tile, (x, y))
            x += w
        y += row_h
    return canvas.filter(ImageFilter.GaussianBlur(blur))


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Tile the canvas with randomly chosen, scaled and flipped face-free photos."""
    photos = [Image.fromarray(getattr(skdata, name)()) for name in BACKGROUNDS]
    return tile_canvas(width, height, rng, photos, row_height=(600, 1000), blur=1.5)


def _feather_mask(size: tuple[int, int]) -> Image.Image:
    """An elliptical alpha mask with a soft edge, so patches blend instead of showing boxes."""
    w, h = size
    mask = Image.new("L", (w, h), 0)
    pad_x, pad_y = w * 0.06, h * 0.06
    ImageDraw.Draw(mask).ellipse((pad_x, pad_y, w - pad_x, h - pad_y), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(1.0, min(w, h) * 0.05)))


def make_mosaic(
    width: int = 4000,
    height: int = 3000,
    n_faces: int = 60,
    face_px: tuple[int, int] = (40, 90),
    seed: int = 0,
    widths: Sequence[float] | None = None,
) -> tuple[Image.Image, list[list[float]]]:
    """Build the mosaic in memory; return the image and the face boxes ``[x1, y1, x2, y2]``.

    Faces are ``face_px`` wide (uniformly random), one per cell of a grid with enough cells
    for ``n_faces``, jittered inside their cell, so they never overlap. ``widths`` instead
    gives each face's width (``n_faces`` is then its length): images with large and tiny
    faces together. Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    canvas = _background(width, height, rng)
    patch, (fx1, fy1, fx2, fy2) = _face_patch()
    face_w = fx2 - fx1
    if widths is not None:
        widths = [float(w) for w in widths]
        n_faces = len(widths)
        lo, hi = min(widths), max(widths)
    else:
        lo, hi = face_px
    max_scale = hi / face_w
    max_pw = int(np.ceil(patch.width * max_scale))
    max_ph = int(np.ceil(patch.height * max_scale))

    # Grid with the cell aspect close to the image's and at least n_faces cells.
    cols = max(1, round(np.sqrt(n_faces * width / height)))
    rows = int(np.ceil(n_faces / cols))
    while cols * rows < n_faces:
        cols += 1
    cell_w, cell_h = width // cols, height // rows
    if cell_w < max_pw or cell_h < max_ph:
        raise ValueError(
            f"{n_faces} faces up to {hi} px do not fit in {width}×{height}: "
            f"cells of {cell_w}×{cell_h} px are smaller than a {max_pw}×{max_ph} patch"
        )
    cells = rng.choice(cols * rows, size=n_faces, replace=False)

    boxes: list[list[float]] = []
    for i, cell in enumerate(sorted(int(c) for c in cells)):
        r, c = divmod(cell, cols)
        width_px = widths[i] if widths is not None else float(rng.uniform(lo, hi))
        scale = width_px / face_w
        pw, ph = round(patch.width * scale), round(patch.height * scale)
        face = patch.resize((pw, ph), Image.Resampling.LANCZOS)
        sx, sy = pw / patch.width, ph / patch.height
        bx1, bx2 = fx1 * sx, fx2 * sx
        if rng.random() < 0.5:
            face = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            bx1, bx2 = pw - fx2 * sx, pw - fx1 * sx
        x = c * cell_w + int(rng.integers(0, cell_w - pw + 1))
        y = r * cell_h + int(rng.integers(0, cell_h - ph + 1))
        canvas.paste(face, (x, y), _feather_mask((pw, ph)))
        boxes.append([round(x + bx1, 1), round(y + fy1 * sy, 1),
                      round(x + bx2, 1), round(y + fy2 * sy, 1)])
    return canvas, boxes


def _truth_json(image: str, width: int, height: int, faces: list[list[float]]) -> str:
    """JSON with one face per line: diff-friendly and still easy to read."""
    head = json.dumps({"image": image, "width": width, "height": height})[:-1]
    rows = ",\n  ".join(json.dumps(b) for b in faces)
    return f'{head}, "faces": [\n  {rows}\n]}}\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="examples/images/mosaic.jpg",
                        help="JPEG to write")
    parser.add_argument("--truth", default=None,
                        help="ground-truth JSON to write [default: examples/truth/<name>.json; "
                             "kept out of the images folder so a run over it sees images only]")
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--faces", type=int, default=60, help="number of faces (default 60)")
    parser.add_argument("--min-face", type=int, default=40, help="smallest face width, px")
    parser.add_argument("--max-face", type=int, default=90, help="largest face width, px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = parser.parse_args(argv)
    if not 0 < args.min_face <= args.max_face:
        parser.error("need 0 < --min-face <= --max-face")

    try:
        image, faces = make_mosaic(args.width, args.height, args.faces,
                                   (args.min_face, args.max_face), args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    image.save(args.out, "JPEG", quality=args.quality)
    stem = os.path.splitext(os.path.basename(args.out))[0]
    truth = args.truth or os.path.join(os.path.dirname(os.path.abspath(__file__)), "truth",
                                       stem + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(truth)), exist_ok=True)
    with open(truth, "w") as f:
        f.write(_truth_json(os.path.basename(args.out), image.width, image.height, faces))
    print(f"wrote {args.out} ({image.width}×{image.height}, {len(faces)} faces) and {truth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
