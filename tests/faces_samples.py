"""Real faces for the face-identity tests and the threshold calibration
(benchmarks/face_threshold.py), all from scikit-image's wheel (no download).

* The astronaut (Eileen Collins): one real colour photo, face ~90 px wide.
* ``lfw_subset``: 200 crops of 25 × 25 grey pixels from Labeled Faces in the Wild; the
  first 100 are real, tightly cropped faces of various people (some people appear more
  than once, which the file does not label), the last 100 are not faces. A face is
  enlarged to ``LFW_SIDE`` px and set on a grey margin so CenterFace sees a whole head.

``AUGMENTATIONS``: what a second photo of the same face may differ by — mirror, shift,
brightness, contrast, half resolution, a slight rotation. Each maps an RGB image to
another of any size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import skimage.data
from PIL import Image, ImageEnhance

LFW_SIDE = 112
LFW_MARGIN = 56


def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def astronaut_face(pad: int = 40) -> np.ndarray:
    """The astronaut's head and some background, ~170 × 200 px (her face is at about
    x 180–270, y 60–177 in the photo)."""
    return np.ascontiguousarray(astronaut()[60 - pad:177 + pad, 180 - pad:271 + pad])


def lfw_faces() -> np.ndarray:
    """The 100 real faces, ``[100, 25, 25]`` uint8 grey."""
    return (skimage.data.lfw_subset()[:100] * 255).round().astype(np.uint8)


def lfw_canvas(face: np.ndarray, side: int = LFW_SIDE, margin: int = LFW_MARGIN) -> np.ndarray:
    """One 25 × 25 LFW crop enlarged to ``side`` px (bicubic), RGB, on a mid-grey margin."""
    big = Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC).convert("RGB")
    canvas = Image.new("RGB", (side + 2 * margin, side + 2 * margin), (128, 128, 128))
    canvas.paste(big, (margin, margin))
    return np.asarray(canvas)


def _pil(fn: Callable[[Image.Image], Image.Image]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.asarray(fn(Image.fromarray(a)))


def _shift(a: np.ndarray, dx: int = 13, dy: int = 9) -> np.ndarray:
    out = np.full_like(a, 128)
    out[dy:, dx:] = a[:a.shape[0] - dy, :a.shape[1] - dx]
    return out


AUGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mirror": lambda a: np.ascontiguousarray(a[:, ::-1]),
    "shift": _shift,
    "brighter": _pil(lambda im: ImageEnhance.Brightness(im).enhance(1.35)),
    "darker": _pil(lambda im: ImageEnhance.Brightness(im).enhance(0.65)),
    "contrast": _pil(lambda im: ImageEnhance.Contrast(im).enhance(1.4)),
    "half-res": _pil(lambda im: im.resize((im.width // 2, im.height // 2),
                                          Image.Resampling.BILINEAR)),
    "rotate+8": _pil(lambda im: im.rotate(8, Image.Resampling.BILINEAR,
                                          fillcolor=(128, 128, 128))),
    "rotate-8": _pil(lambda im: im.rotate(-8, Image.Resampling.BILINEAR,
                                          fillcolor=(128, 128, 128))),
}
