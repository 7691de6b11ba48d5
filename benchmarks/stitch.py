"""Stitching cost per megapixel: what the sink spends on a segmented image, without
inference.

For each model (deeplabv3: 21 logits a pixel; selfie-segmentation: one probability), an
image of ``--size`` is planned as segmentation plans it (a grid at the model's input
scale, 25 % overlap) and the tiles' score maps are fed to ``Stitcher`` in plan order. The
score maps are real: a few tiles of a mosaic of scikit-image's astronaut are inferred
once and reused in turn, so the label maps have the runs a real mask has (random scores
would make PNG and RLE look far worse than they are). Timed, median of ``--repeats``:

- stitch: ``Stitcher.add`` for every tile, strips consumed (resize, feather, blend,
  argmax / threshold, per-class counts);
- + png: the strips also written as a palette PNG (``MaskOutputs(png=...)``);
- + rle: the strips also spilled and run-length encoded per class (COCO RLE).

The whole-image row times one tile resized to a large image (a small model input
stretched over it: the cost is the upscaling).

The wide row (``--wide``, deeplabv3 only, stitch only) is about memory: a strip of a
20000-pixel-wide image, 1279 rows high by default — its last grid row sits 57 px below the
one before, as a 20000 × 20000 image's does, so what is held at most is what 20000²
holds (it does not grow with the height). ``peak MB`` is the stitcher's own count
(``Stitcher.peak_bytes``: score maps held + strip buffers); ``traced MB`` is what
tracemalloc sees in one more run where every tile gets a fresh copy of its score map,
as the sink's tiles do (score maps reused from a list would stay alive anyway).

    python benchmarks/stitch.py                      # 4000 x 3000, ~2 min on 2 cores
    python benchmarks/stitch.py --size 8000x6000 --repeats 1 --out stitch.md
    python benchmarks/stitch.py --wide 20000x20000 --repeats 1   # the whole image, slow
    PYTHONPATH=/work/main python benchmarks/stitch.py            # another tree's stitcher
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from _common import markdown_table

sys.path.append(str(Path(__file__).resolve().parent.parent))

from zmqvision.models import CATALOG  # noqa: E402
from zmqvision.scales import parse_size  # noqa: E402
from zmqvision.segment import MaskOutputs, Segmenter, Stitcher  # noqa: E402
from zmqvision.segment.reference import plan_segmentation  # noqa: E402
from zmqvision.tiling import cut_tile, plan_scales  # noqa: E402

MODELS = ("deeplabv3", "selfie-segmentation")


def real_scores(seg: Segmenter, n: int) -> list[np.ndarray]:
    """Score maps of ``n`` tiles of an astronaut mosaic (inferred once)."""
    import skimage.data

    photo = skimage.data.astronaut()
    mosaic = np.ascontiguousarray(np.tile(photo, (2, 2, 1)))
    tiles = plan_segmentation(1024, 1024, seg.input_size, seg.input_size)
    return [seg.infer(cut_tile(mosaic, t, seg.input_size)[0]) for t in tiles[:n]]


def run_once(w, h, tiles, spec, channels, scores, outputs: str, tmp: Path,
             fresh: bool = False) -> tuple[float, int]:
    """Seconds and ``peak_bytes`` of one stitch; ``fresh``: each tile a copy of its scores."""
    st = Stitcher(w, h, tiles, spec.input_size, channels, overlap=0.25,
                  threshold=spec.score_threshold)
    out = None
    if outputs != "stitch":
        out = MaskOutputs(w, h, spec.labels, png=tmp / "m.png", rle=outputs == "+ rle",
                          spill_dir=tmp)
    t0 = time.perf_counter()
    for k, tile in enumerate(tiles):
        a = scores[k % len(scores)]
        for strip in st.add(tile.index, a.copy() if fresh else a):
            if out is not None:
                out.feed(strip)
    if out is not None:
        out.finish(st.counts)
    return time.perf_counter() - t0, st.peak_bytes


def traced_peak(w, h, tiles, spec, channels, scores, tmp: Path) -> int:
    """Most bytes tracemalloc sees allocated during a stitch fed fresh score maps."""
    tracemalloc.start()
    try:
        run_once(w, h, tiles, spec, channels, scores, "stitch", tmp, fresh=True)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4000x3000", help="image size WxH (default 4000x3000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wide", default="20000x1279",
                    help="size of the wide deeplabv3 row (default 20000x1279; 'none': no row)")
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args()
    w, h = parse_size(args.size)
    mp = w * h / 1e6
    rows = []
    import zmqvision

    print(f"stitcher from {Path(zmqvision.__file__).parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="zmqvision-stitch-") as tmp:
        for name in MODELS:
            spec = CATALOG[name]
            seg = Segmenter(spec, threads=2)
            scores = real_scores(seg, 16)
            cases = [(w, h, "grid", plan_segmentation(w, h, spec.input_size, spec.input_size),
                      ("stitch", "+ png", "+ rle")),
                     (w, h, "whole image", plan_scales(w, h, [None], 0.25), ("stitch",))]
            if name == "deeplabv3" and args.wide != "none":
                ww, wh = parse_size(args.wide)
                cases.append((ww, wh, f"grid {ww}x{wh}",
                              plan_segmentation(ww, wh, spec.input_size, spec.input_size),
                              ("stitch",)))
            for cw, ch, plan_name, tiles, outputs in cases:
                cmp = cw * ch / 1e6
                for what in outputs:
                    times, peak = [], 0
                    for _ in range(args.repeats):
                        dt, peak = run_once(cw, ch, tiles, spec, seg.channels, scores, what,
                                            Path(tmp))
                        times.append(dt)
                    traced = ""
                    if what == "stitch":
                        mb = traced_peak(cw, ch, tiles, spec, seg.channels, scores, Path(tmp))
                        traced = f"{mb / 1e6:.0f}"
                    med = statistics.median(times)
                    rows.append([name, str(seg.channels), plan_name, str(len(tiles)), what,
                                 f"{med * 1000 / cmp:.0f}", f"{cmp / med:.1f}",
                                 f"{peak / 1e6:.0f}", traced])
                    print("  ".join(rows[-1]), file=sys.stderr)
    table = markdown_table(["model", "channels", "plan", "tiles", "work", "ms/MP", "MP/s",
                            "peak MB", "traced MB"], rows)
    head = (f"Stitching a {w}x{h} image ({mp:.1f} MP; the wide row: its own size), median "
            f"of {args.repeats}:\n\n")
    print(head + table)
    if args.out:
        Path(args.out).write_text(head + table + "\n")


if __name__ == "__main__":
    main()
