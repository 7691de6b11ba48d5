"""Quadrilaterals: corner order, minimum-area rectangles, and crops from the original.

Coordinates are continuous image pixels (pixel ``k`` spans ``[k, k+1)``), as the
detectors' boxes. A quad is ``[4, 2]`` (x, y) in the order top-left, top-right,
bottom-right, bottom-left as the text reads (``order_quad``).

``crop_quad`` reads the ORIGINAL image, never a tile: a tile is a shrunk, letterboxed
copy, and a plate or a line cut by a tile border lacks pixels there. Only the small
region the quad covers is handed to Pillow, so cropping a plate out of a 40-megapixel
photo does not copy the photo. Pillow's ``QUAD`` transform maps the output rectangle
bilinearly onto the quad: exact for rectangles and parallelograms, and close to a true
perspective warp for the mild tilts of a plate seen by a road camera.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from zmqvision.boxes import pixel_reach


def order_quad(points: np.ndarray) -> np.ndarray:
    """``[4, 2]`` corners as top-left, top-right, bottom-right, bottom-left.

    The two left-most points (by x) are the left side, the upper of them its top; the
    same on the right. Robust to any input order and to tilts below 45°, which is all a
    text line or a plate read left to right can have.
    """
    p = np.asarray(points, np.float64).reshape(4, 2)
    by_x = p[np.lexsort((p[:, 1], p[:, 0]))]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1], kind="stable")]
    tr, br = right[np.argsort(right[:, 1], kind="stable")]
    return np.array([tl, tr, br, bl])


def quad_size(quad: np.ndarray) -> tuple[float, float]:
    """(width, height) of an ordered quad: the longer of each pair of opposite sides."""
    q = np.asarray(quad, np.float64)
    w = max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[3]))
    h = max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]))
    return float(w), float(h)


def crop_quad(image: np.ndarray, quad: np.ndarray, size: tuple[int, int] | None = None
              ) -> np.ndarray:
    """The ``[h, w, 3]`` uint8 crop of the ordered ``quad`` (image pixels) from ``image``
    (the original ``[H, W, 3]`` uint8 picture), rectified to an upright rectangle of
    ``size`` ``(w, h)`` (default: the quad's own side lengths). Bilinear; grey where the
    quad leaves the image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    q = np.asarray(quad, np.float64).reshape(4, 2)
    if size is None:
        w, h = quad_size(q)
        size = (max(1, round(w)), max(1, round(h)))
    h_img, w_img = image.shape[:2]
    x0, y0, x1, y1 = pixel_reach(q, w_img, h_img)
    if x1 <= x0 or y1 <= y0:
        return np.full((size[1], size[0], 3), 128, np.uint8)
    region = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    # QUAD's data: the source corners upper-left, lower-left, lower-right, upper-right.
    tl, tr, br, bl = q - (x0, y0)
    data = (*tl, *bl, *br, *tr)
    out = region.transform(size, Image.Transform.QUAD, data,
                           resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
    return np.asarray(out)


def min_area_rect(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The smallest-area rectangle around ``points`` ``[K, 2]``: its ordered corners
    ``[4, 2]``, width and height (along its own axes, width the side nearer to
    horizontal). Rotating calipers over the convex hull: one of the rectangle's sides
    lies on a hull edge (Freeman & Shapira 1975), so every edge direction is tried."""
    hull = convex_hull(points)
    if len(hull) < 3:
        lo, hi = hull.min(axis=0), hull.max(axis=0)
        quad = np.array([lo, [hi[0], lo[1]], hi, [lo[0], hi[1]]])
        return quad, float(hi[0] - lo[0]), float(hi[1] - lo[1])
    edges = np.roll(hull, -1, axis=0) - hull
    angles = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2))
    c, s = np.cos(angles), np.sin(angles)
    # hull in each candidate frame: u along the edge, v across it  [A, K]
    u = hull[:, 0][None] * c[:, None] + hull[:, 1][None] * s[:, None]
    v = -hull[:, 0][None] * s[:, None] + hull[:, 1][None] * c[:, None]
    area = (u.max(1) - u.min(1)) * (v.max(1) - v.min(1))
    k = int(np.argmin(area))
    ca, sa = c[k], s[k]
    u0, u1, v0, v1 = u[k].min(), u[k].max(), v[k].min(), v[k].max()
    frame = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])
    corners = np.stack([frame[:, 0] * ca - frame[:, 1] * sa,
                        frame[:, 0] * sa + frame[:, 1] * ca], axis=1)
    quad = order_quad(corners)
    w, h = quad_size(quad)
    return quad, w, h


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise hull vertices of ``[K, 2]`` points (Andrew's monotone chain)."""
    p = np.unique(np.asarray(points, np.float64).reshape(-1, 2), axis=0)
    if len(p) < 3:
        return p

    def half(pts: np.ndarray) -> list:
        out: list = []
        for q in pts:
            while len(out) >= 2:
                (ax, ay), (bx, by) = out[-2], out[-1]
                if (bx - ax) * (q[1] - ay) - (by - ay) * (q[0] - ax) > 0:
                    break
                out.pop()
            out.append(q)
        return out

    lower, upper = half(p), half(p[::-1])
    return np.array(lower[:-1] + upper[:-1])


def expand_rect(quad: np.ndarray, ratio: float) -> np.ndarray:
    """DB's "unclip": grow an ordered rectangle by ``d = area * ratio / perimeter`` on
    every side (what PaddleOCR's polygon offset gives a rectangle, its rounded corners
    cut square again by the minimum-area rectangle that follows)."""
    q = np.asarray(quad, np.float64)
    w, h = quad_size(q)
    if w <= 0 or h <= 0:
        return q.copy()
    d = w * h * ratio / (2 * (w + h))
    ex = (q[1] - q[0]) / max(np.linalg.norm(q[1] - q[0]), 1e-9)
    ey = (q[3] - q[0]) / max(np.linalg.norm(q[3] - q[0]), 1e-9)
    return q + np.array([-ex - ey, ex - ey, ex + ey, -ex + ey]) * d
