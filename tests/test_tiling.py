"""Tiling arithmetic, letterboxing and the way back to image coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zmqvision.tiling import (
    Tile,
    cut_tile,
    draft_factor,
    letterbox,
    plan_tiles,
    tile_starts,
    to_image_coords,
)

lengths = st.integers(1, 5000)
tiles = st.integers(1, 1024)
overlaps = st.floats(0.0, 0.95, allow_nan=False)


# --- one axis -------------------------------------------------------------------------


@given(lengths, tiles, overlaps)
def test_starts_cover_axis_with_overlap_and_flush_edges(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    if length <= tile:
        assert starts == [0]
        return
    assert starts[0] == 0
    assert starts[-1] == length - tile  # last tile flush with the border, full size
    assert starts == sorted(set(starts))
    assert all(0 <= s <= length - tile for s in starts)  # never outside the image
    want = min(round(tile * overlap), tile - 1)  # the step is at least 1 pixel
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + tile - b >= want  # consecutive tiles overlap enough
        assert b - a <= tile  # hence no gap


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "want"),
    [
        (100, 100, 0.2, [0]),
        (50, 100, 0.2, [0]),
        (1, 1, 0.0, [0]),
        (200, 100, 0.0, [0, 100]),
        (250, 100, 0.0, [0, 100, 150]),
        (250, 100, 0.2, [0, 80, 150]),
        (101, 100, 0.5, [0, 1]),
        (5, 2, 0.9, [0, 1, 2, 3]),  # step floored at 1
    ],
)
def test_starts_explicit(length, tile, overlap, want):
    assert tile_starts(length, tile, overlap) == want


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(10, 0, 0.2), (10, 5, -0.1), (10, 5, 1.0), (0, 5, 0.2)],
)
def test_starts_rejects_bad_arguments(length, tile, overlap):
    with pytest.raises(ValueError):
        tile_starts(length, tile, overlap)


# --- the grid -------------------------------------------------------------------------


def _coverage(w: int, h: int, plan: list[Tile]) -> np.ndarray:
    hits = np.zeros((h, w), np.int32)
    for t in plan:
        x0, y0, x1, y1 = t.box
        hits[y0:y1, x0:x1] += 1
    return hits


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 700),
    st.integers(1, 700),
    st.integers(8, 300),
    st.integers(8, 300),
    overlaps,
    st.booleans(),
)
def test_plan_covers_every_pixel_inside_the_image(w, h, tw, th, overlap, full):
    plan = plan_tiles(w, h, (tw, th), overlap, full)
    grid = [t for t in plan if not t.full]
    assert [t.index for t in plan] == list(range(len(plan)))
    for t in grid:
        x0, y0, x1, y1 = t.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert t.width == min(tw, w) and t.height == min(th, h)  # full size, no slivers
    assert (_coverage(w, h, grid) >= 1).all()
    # Row-major: y then x ascending.
    assert [t.box[:2][::-1] for t in grid] == sorted(t.box[:2][::-1] for t in grid)
    fulls = [t for t in plan if t.full]
    if full and len(grid) > 1:
        assert len(fulls) == 1 and fulls[0].box == (0, 0, w, h) and plan[-1].full
    else:
        assert fulls == []


def test_plan_edge_tiles_flush_with_borders():
    plan = plan_tiles(1000, 700, (320, 320), 0.2)
    assert max(t.box[2] for t in plan) == 1000
    assert max(t.box[3] for t in plan) == 700
    assert {t.box[0] for t in plan} == set(tile_starts(1000, 320, 0.2))
    assert len(plan) == len(tile_starts(1000, 320, 0.2)) * len(tile_starts(700, 320, 0.2))


def test_one_pixel_tiles():
    plan = plan_tiles(3, 2, (1, 1), 0.5)
    assert [t.box for t in plan] == [(x, y, x + 1, y + 1) for y in range(2) for x in range(3)]


def test_one_pixel_image():
    assert plan_tiles(1, 1, (640, 640)) == [Tile(0, (0, 0, 1, 1))]
    assert plan_tiles(1, 1, (640, 640), full_pass=True) == [Tile(0, (0, 0, 1, 1))]


def test_image_smaller_than_tile_is_one_tile():
    assert plan_tiles(300, 200, (640, 640), 0.2, full_pass=True) == [Tile(0, (0, 0, 300, 200))]


def test_long_strip():
    plan = plan_tiles(20000, 50, (640, 640), 0.2)
    assert all(t.box[1] == 0 and t.box[3] == 50 and t.width == 640 for t in plan)
    assert plan[-1].box[2] == 20000
    assert (_coverage(20000, 50, plan) >= 1).all()
    plan_full = plan_tiles(20000, 50, (640, 640), 0.2, full_pass=True)
    assert plan_full[:-1] == plan
    assert plan_full[-1] == Tile(len(plan), (0, 0, 20000, 50), full=True)


def test_full_pass_adds_exactly_one_tile():
    a = plan_tiles(2000, 1500, (640, 640), 0.25)
    b = plan_tiles(2000, 1500, (640, 640), 0.25, full_pass=True)
    assert b[:-1] == a and len(b) == len(a) + 1
    assert b[-1] == Tile(len(a), (0, 0, 2000, 1500), full=True)


# --- letterbox ------------------------------------------------------------------------


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("h", "w"), [(640, 640), (320, 640), (640, 100), (1000, 2000), (1, 1)])
def test_letterbox_shape_scale_and_padding(h, w):
    img = _image(h, w)
    out, s = letterbox(img, (640, 480))
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert s == min(640 / w, 480 / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    # Content at the top-left (no zero pixel: source values are >= 1), zeros elsewhere.
    assert (out[:nh, :nw] > 0).all()
    assert not out[nh:].any() and not out[:, nw:].any()


def test_letterbox_same_size_does_not_copy():
    img = _image(480, 640)
    out, s = letterbox(img, (640, 480))
    assert s == 1.0 and out is img


def test_letterbox_same_size_view_is_made_contiguous():
    big = _image(1000, 1000)
    view = big[100:580, 200:840]
    assert not view.flags.c_contiguous
    out, s = letterbox(view, (640, 480))
    assert s == 1.0 and out.flags.c_contiguous and np.array_equal(out, view)


def test_letterbox_smaller_crop_is_padded_not_resampled():
    img = _image(200, 640)
    out, s = letterbox(img, (640, 480))
    assert s == 1.0
    assert np.array_equal(out[:200], img) and not out[200:].any()


def test_cut_tile_crops_the_tile_box():
    img = _image(900, 1300)
    tile = Tile(3, (600, 300, 1240, 780))
    out, s = cut_tile(img, tile, (640, 480))
    assert s == 1.0 and np.array_equal(out, img[300:780, 600:1240])
    full, s_full = cut_tile(img, Tile(4, (0, 0, 1300, 900), full=True), (640, 640))
    assert s_full == 640 / 1300 and full.shape == (640, 640, 3)


# --- back to image coordinates --------------------------------------------------------


@given(
    st.integers(0, 10000),
    st.integers(0, 10000),
    st.integers(1, 2000),
    st.integers(1, 2000),
    st.sampled_from([(640, 640), (512, 384), (1024, 768)]),
    st.integers(0, 2**31),
)
def test_to_image_coords_inverts_forward_mapping(x0, y0, w, h, input_size, seed):
    s = min(input_size[0] / w, input_size[1] / h)
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, (8, 2, 2)) * (w, h)
    img_boxes = np.c_[p.min(1) + (x0, y0), p.max(1) + (x0, y0)]
    model_boxes = (img_boxes - (x0, y0, x0, y0)) * s  # forward: image px -> input px
    back = to_image_coords(model_boxes, (x0, y0, x0 + w, y0 + h), s)
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, img_boxes, rtol=0, atol=1e-6)


def test_to_image_coords_clips_to_tile_and_returns_new_array():
    boxes = np.array([[-10.0, -5.0, 700.0, 100.0], [600.0, 600.0, 650.0, 650.0]])
    keep = boxes.copy()
    out = to_image_coords(boxes, (1000, 2000, 1640, 2640), 1.0)
    assert out is not boxes and np.array_equal(boxes, keep)
    np.testing.assert_array_equal(
        out, [[1000, 2000, 1640, 2100], [1600, 2600, 1640, 2640]]
    )
    half = to_image_coords(np.array([[0.0, 0.0, 320.0, 320.0]], np.float32), (0, 0, 640, 640), 0.5)
    np.testing.assert_array_equal(half, [[0, 0, 640, 640]])
    assert to_image_coords(np.zeros((0, 4)), (0, 0, 10, 10), 1.0).shape == (0, 4)


def _planted_box_back(img_w, img_h, rect, tile_side, input_side):
    """Plant a white rectangle, cut every tile that holds it whole, find it in each
    resized tile, and map what was found back to image pixels."""
    img = np.zeros((img_h, img_w, 3), np.uint8)
    x0, y0, x1, y1 = rect
    img[y0:y1, x0:x1] = 255
    found = []
    for tile in plan_tiles(img_w, img_h, (tile_side, tile_side), 0.2, False):
        tx0, ty0, tx1, ty1 = tile.box
        if not (tx0 <= x0 and ty0 <= y0 and x1 <= tx1 and y1 <= ty1):
            continue
        cut, scale = cut_tile(img, tile, (input_side, input_side))
        ys, xs = np.nonzero(cut[:, :, 0] >= 128)  # the edge is where bilinear crosses half
        in_box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
        found.append(to_image_coords(in_box, tile.box, scale)[0])
    return found


@pytest.mark.parametrize("tile_side,input_side", [
    (256, 640), (320, 640), (333, 640), (640, 640), (1280, 640), (1001, 640), (300, 300),
    (150, 300), (97, 128),
])
@pytest.mark.parametrize("where", ["inside", "edge"])
def test_a_planted_box_comes_back_within_one_pixel_after_resizing(tile_side, input_side,
                                                                  where):
    """Cut at N, resized to M (enlarged or shrunk), mapped back: the box is where it was."""
    img_w, img_h = 3 * tile_side + 17, 2 * tile_side + 9  # odd sizes: edge tiles shift
    side = max(8, tile_side // 4)
    if where == "inside":
        rect = (tile_side // 3, tile_side // 5, tile_side // 3 + side, tile_side // 5 + side)
    else:  # against the bottom-right border: only the flush edge tile holds it
        rect = (img_w - side - 1, img_h - side - 2, img_w - 1, img_h - 2)
    found = _planted_box_back(img_w, img_h, rect, tile_side, input_side)
    assert found, "no tile holds the planted box whole"
    for box in found:
        assert np.abs(box - np.array(rect, np.float64)).max() <= 1.0, (box, rect)


# ------------------------------------------------------------------ reduced decoding


def _tiles(*sides):
    return [Tile(i, (0, 0, w, h)) for i, (w, h) in enumerate(sides)]


@pytest.mark.parametrize(("sides", "want"), [
    ([(640, 640)], 1),  # cut = input: every pixel is seen
    ([(256, 256)], 1),  # enlarged
    ([(1279, 1279)], 1),  # shrunk by less than 2
    ([(1280, 1280)], 2),
    ([(1280, 1280), (640, 640)], 1),  # one native scale needs the full image
    ([(4000, 3000)], 4),  # the whole image shrunk 6.25x (width limits)
    ([(30000, 20000)], 8),  # at most 1/8: what JPEG's DCT scaling offers
    ([(1280, 200)], 2),  # letterboxed: the longer side limits
])
def test_draft_factor_is_the_largest_power_of_two_no_tile_is_shrunk_less_than(sides, want):
    assert draft_factor(_tiles(*sides), (640, 640)) == want


@pytest.mark.parametrize(("tile_side", "factor"), [(1280, 2), (1500, 2), (2600, 2),
                                                   (2600, 4), (2560, 4)])
@pytest.mark.parametrize("where", ["inside", "edge"])
def test_cuts_from_reduced_pixels_keep_the_geometry(tile_side, factor, where):
    """A tile cut from an image decoded at 1/factor has the scale and padding of the
    full-resolution cut, and a planted box comes back within factor/2 + 1 image pixels."""
    input_side = 640
    assert draft_factor(_tiles((tile_side, tile_side)), (input_side, input_side)) >= factor
    img_w, img_h = 2 * tile_side + 37, tile_side + 211
    side = tile_side // 4
    if where == "inside":
        rect = (tile_side // 3, tile_side // 5, tile_side // 3 + side, tile_side // 5 + side)
    else:
        rect = (img_w - side - 3, img_h - side - 2, img_w - 3, img_h - 2)
    img = np.zeros((img_h, img_w, 3), np.uint8)
    img[rect[1]:rect[3], rect[0]:rect[2]] = 255
    small = np.asarray(Image.fromarray(img).reduce(factor))  # what a JPEG draft gives
    for tile in plan_tiles(img_w, img_h, (tile_side, tile_side), 0.2, False):
        full_cut, full_scale = cut_tile(img, tile, (input_side, input_side))
        cut, scale = cut_tile(small, tile, (input_side, input_side), factor)
        assert cut.shape == full_cut.shape and scale == full_scale
        tx0, ty0, tx1, ty1 = tile.box
        if not (tx0 <= rect[0] and ty0 <= rect[1] and rect[2] <= tx1 and rect[3] <= ty1):
            continue
        ys, xs = np.nonzero(cut[:, :, 0] >= 128)
        found = to_image_coords(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]],
                                         np.float64), tile.box, scale)[0]
        assert np.abs(found - np.array(rect, np.float64)).max() <= factor / 2 + 1, (found, rect)
