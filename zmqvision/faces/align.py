"""Face alignment: five landmarks → the standard 112 × 112 crop an embedder expects.

Embedding models are trained on faces warped so that the eyes, nose tip and mouth
corners sit at fixed places (the ArcFace / InsightFace template below). Unaligned, a
face shifted by 6 px already loses most of its similarity to itself (MODELS.md), so
every face is warped by the similarity transform (rotation, uniform scale, shift) that
best fits its five points to the template, in the least-squares sense (Umeyama 1991).

The warp always reads the ORIGINAL image, never a tile: a tile is a letterboxed,
usually shrunk copy, and a face cut by its border lacks pixels. Only the small region
of the image the crop can reach is handed to Pillow, so aligning a face in a
40-megapixel photo does not copy the photo.

Coordinates: landmarks are continuous pixel coordinates (pixel ``k`` spans ``[k, k+1)``,
as the detectors' boxes); the template is in the convention of the code it comes from
(``cv2.warpAffine``: pixel ``j``'s centre is at ``j``). ``warp_matrix`` accounts for the
half pixel between them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from zmqvision.boxes import pixel_reach

CROP_SIZE = 112

# x, y of the left eye, right eye, nose tip, left and right mouth corners (as seen) in a
# 112 × 112 crop: the InsightFace "arcface_dst" template.
TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The ``[2, 3]`` matrix ``M`` of the rotation, uniform scale and shift that maps
    ``src`` points ``[K, 2]`` closest to ``dst`` (least squares; Umeyama's closed form,
    without reflections): ``dst ≈ M[:, :2] @ p + M[:, 2]``."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching [K>=2, 2] point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("source points all coincide: no transform fits them")
    u, s, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_s)
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def warp_matrix(landmarks: np.ndarray, template: np.ndarray = TEMPLATE) -> np.ndarray:
    """``[2, 3]``: crop pixel centre (template convention) → image coordinates
    (continuous). The inverse of the fitted image → template transform, shifted by half
    a pixel on both sides (see the module docstring)."""
    fwd = similarity_transform(landmarks, template)
    a = fwd[:, :2]
    inv_a = np.linalg.inv(a)
    inv = np.empty((2, 3))
    inv[:, :2] = inv_a
    inv[:, 2] = -inv_a @ fwd[:, 2]
    return inv


def align(
    image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE,
    template: np.ndarray = TEMPLATE,
) -> np.ndarray:
    """The aligned ``[size, size, 3]`` uint8 crop of the face whose five points (image
    pixels) are ``landmarks`` ``[5, 2]``; bilinear, black where the crop leaves the
    image. ``image`` is the original ``[H, W, 3]`` uint8 picture."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    tpl = np.asarray(template, np.float64) * (size / CROP_SIZE)
    inv = warp_matrix(np.asarray(landmarks, np.float64).reshape(-1, 2), tpl)
    # Pillow samples output pixel (i, j) at continuous (i + .5, j + .5), i.e. template
    # coordinates (i, j) = (u - .5, v - .5); the image point is inv applied to those.
    a = inv[:, :2]
    t = inv[:, 2] - a @ np.array([0.5, 0.5])
    # Only the part of the image the crop reaches (plus a pixel for bilinear taps).
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    reach = corners @ a.T + t
    h, w = image.shape[:2]
    x0, y0, x1, y1 = pixel_reach(reach, w, h)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, 3), np.uint8)
    region = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    coeffs = (a[0, 0], a[0, 1], t[0] - x0, a[1, 0], a[1, 1], t[1] - y0)
    out = region.transform((size, size), Image.Transform.AFFINE, coeffs,
                           resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out)


def align_many(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """``[N, size, size, 3]`` aligned crops for ``landmarks`` ``[N, 5, 2]``."""
    out = np.empty((len(landmarks), size, size, 3), np.uint8)
    for i, pts in enumerate(landmarks):
        out[i] = align(image, pts, size)
    return out
