"""Planning the cuts: --min-size, --scales and what a plan costs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqvision.models import resolve
from zmqvision.scales import (
    MIN_CUT,
    PlanError,
    cut_for_min_size,
    describe,
    resolve_scales,
    scales_json,
    summarize,
)
from zmqvision.tiling import plan_scales, plan_tiles

pytestmark = pytest.mark.timeout(60)

CENTERFACE = resolve("centerface")


def test_min_size_cut_brings_the_object_to_the_reliable_size():
    assert CENTERFACE.reliable_size == 56  # measured in real photos: benchmarks/min_size.py
    assert resolve("blazeface-short").reliable_size == 32
    # 640 x 16 / 56 = 182.86: rounded down, so a 16 px face becomes >= 56 px, not 55.9.
    assert cut_for_min_size(CENTERFACE, 16) == (182, 182)
    assert cut_for_min_size(CENTERFACE, 56) == (640, 640)  # already reliable: native
    assert cut_for_min_size(CENTERFACE, 112) == (1280, 1280)  # large objects: shrink, cheaper


@given(min_size=st.floats(1.0, 200.0), side=st.sampled_from([320, 480, 640, 960]))
def test_planned_enlargement_never_leaves_the_object_below_the_reliable_size(min_size, side):
    spec = CENTERFACE.with_input_size(side, side)
    cut = cut_for_min_size(spec, min_size)
    scale = side / cut[0]
    if cut[0] > MIN_CUT:
        assert min_size * scale >= spec.reliable_size - 1e-9
        assert min_size * side / (cut[0] + 1) < spec.reliable_size  # the largest such cut


def test_min_size_needs_a_measured_model():
    with pytest.raises(PlanError, match="no measured reliable object size"):
        cut_for_min_size(resolve("ssd-mobilenetv2-oid"), 16)
    with pytest.raises(PlanError, match="> 0"):
        cut_for_min_size(CENTERFACE, 0)


def test_scales_tokens_order_and_duplicates():
    s = resolve_scales(CENTERFACE, scales=["native", (256, 256), "full", (640, 640)])
    assert s == ((640, 640), (256, 256), None)
    assert resolve_scales(CENTERFACE) == ((640, 640),)
    assert resolve_scales(CENTERFACE, full_pass=True) == ((640, 640), None)
    assert resolve_scales(CENTERFACE, min_size=16, scales=["full"]) == (None, (182, 182))
    assert resolve_scales(CENTERFACE, tile_size=(300, 200), scales=["native"]) == (
        (300, 200), (640, 640))
    assert scales_json(((426, 426), None)) == [[426, 426], "full"]
    with pytest.raises(PlanError, match="give one of them"):
        resolve_scales(CENTERFACE, tile_size=(300, 300), min_size=16)
    with pytest.raises(PlanError, match="unknown scale"):
        resolve_scales(CENTERFACE, scales=["huge"])


def test_plan_scales_is_each_grid_in_turn_without_repeated_boxes():
    a = plan_tiles(2000, 1500, (640, 640), 0.2)
    b = plan_tiles(2000, 1500, (300, 300), 0.2)
    both = plan_scales(2000, 1500, [(640, 640), (300, 300), None], 0.2)
    assert [t.box for t in both] == [t.box for t in a] + [t.box for t in b] + [(0, 0, 2000,
                                                                                 1500)]
    assert [t.index for t in both] == list(range(len(both)))
    assert [t.full for t in both].count(True) == 1
    # An image smaller than every cut is one tile, however many scales are asked for.
    small = plan_scales(200, 100, [(640, 640), (300, 300), None], 0.2)
    assert [t.box for t in small] == [(0, 0, 200, 100)]


def test_summary_counts_tiles_and_cost_against_the_default():
    scales = resolve_scales(CENTERFACE, min_size=16)
    s = summarize(CENTERFACE, CENTERFACE, scales, 0.2, 2000, 1500)
    assert (s.tiles, s.default_tiles) == (154, 12)
    assert s.cost == pytest.approx(154 / 12)
    assert s.costly  # the promise at 16 px costs 12.8x the default: said before the job
    s24 = summarize(CENTERFACE, CENTERFACE, resolve_scales(CENTERFACE, min_size=24), 0.2,
                    2000, 1500)
    assert not s24.costly
    # A bigger model input costs per pixel inferred: 12 tiles at 1280 = 4x 12 tiles at 640.
    big = CENTERFACE.with_input_size(1280, 1280)
    s2 = summarize(big, CENTERFACE, ((640, 640),), 0.2, 2000, 1500)
    assert s2.cost == pytest.approx(4.0)
    tiny = summarize(CENTERFACE, CENTERFACE, resolve_scales(CENTERFACE, min_size=3), 0.2,
                     4000, 3000)
    assert tiny.costly and tiny.cost > 10
    text = describe(CENTERFACE, scales, 16, s)
    assert "182x182 px cuts enlarged x3.52 to 640x640" in text
    assert "16 px become 56 px" in text and "154 tiles" in text


def test_a_plan_below_the_measured_promise_says_so():
    text = describe(CENTERFACE, resolve_scales(CENTERFACE, min_size=16), 16)
    assert "objects under 24 px are found less reliably" in text
    assert "note" not in describe(CENTERFACE, resolve_scales(CENTERFACE, min_size=24), 24)
    blaze = resolve("blazeface-short")
    assert "note" not in describe(blaze, resolve_scales(blaze, min_size=16), 16)
    assert "under 16 px" in describe(blaze, resolve_scales(blaze, min_size=12), 12)
