"""Shrunk cuts: JPEGs decoded at reduced size (DCT scaling) against a full decode, side by
side in one run.

Two measurements over the same generated 4000×3000 JPEGs (``throughput.make_inputs``):

- *ventilator feed*: decode + plan + cut every tile of every image in this process, one
  thread, nothing sent: the CPU the ventilator spends per image, with and without the
  reduction. Medians of ``--repeats`` alternating passes.
- *zmqvision run*: the whole command as a user runs it (wall time, process start and
  compile included), default against ``--full-decode``, alternating pairs; the ratio is
  the median of the per-pair ratios.

Cases: ``--tile 1280`` with CenterFace at 640 (every cut shrunk 2×: decoded at 1/2) and
``--scales full`` (the whole image as one tile, shrunk 6.25×: decoded at 1/4).

    python benchmarks/jpeg_draft.py [--images 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import markdown_table, run_zmqvision
from throughput import make_inputs

CASES = [("--tile 1280", ["--tile", "1280"], [(1280, 1280)]),
         ("--scales full", ["--scales", "full"], ["full"])]


def feed_seconds(paths: list[Path], cuts, draft: bool) -> float:
    """CPU-bound ventilator work per image: read, decode (reduced or not), plan, cut."""
    from zmqvision import io
    from zmqvision.models import resolve
    from zmqvision.scales import resolve_scales
    from zmqvision.tiling import cut_tile, draft_reducer, plan_scales

    spec = resolve("centerface")
    scales = resolve_scales(spec, scales=tuple(cuts))
    reduce = draft_reducer(scales, 0.2, spec.input_size) if draft else None
    t0 = time.process_time()
    for p in paths:
        img = io.decode_image(io.read_file(str(p)), reduce=reduce)
        for tile in plan_scales(img.width, img.height, scales, 0.2):
            cut_tile(img.pixels, tile, spec.input_size, img.reduced)
    return (time.process_time() - t0) / len(paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="zv-draft-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        paths = make_inputs(folder, args.images, (4000, 3000))
        out = Path(tmp) / "out.jsonl"
        run_zmqvision(folder, out, "--model", "centerface", "--no-cache")  # compile cache
        for name, options, cuts in CASES:
            feed = {True: [], False: []}
            for r in range(args.repeats):
                for draft in ((True, False) if r % 2 == 0 else (False, True)):
                    feed[draft].append(feed_seconds(paths, cuts, draft))
            wall = {True: [], False: []}
            for r in range(args.repeats):
                for draft in ((True, False) if r % 2 == 0 else (False, True)):
                    extra = [] if draft else ["--full-decode"]
                    t0 = time.perf_counter()
                    run_zmqvision(folder, out, "--model", "centerface", "--no-cache",
                                  *options, *extra)
                    wall[draft].append(time.perf_counter() - t0)
                print(f"{name} repeat {r + 1}/{args.repeats}: reduced {wall[True][-1]:.2f} s, "
                      f"full {wall[False][-1]:.2f} s", file=sys.stderr, flush=True)
            speed = statistics.median(f / d for d, f in zip(wall[True], wall[False],
                                                              strict=True))
            rows.append([name,
                         f"{statistics.median(feed[False]) * 1000:.0f}",
                         f"{statistics.median(feed[True]) * 1000:.0f}",
                         f"{statistics.median(feed[False]) / statistics.median(feed[True]):.2f}×",
                         f"{statistics.median(wall[False]):.2f}",
                         f"{statistics.median(wall[True]):.2f}", f"{speed:.2f}×"])
    print(f"command: {shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print(f"{args.images} JPEGs 4000x3000, centerface at 640, {args.repeats} alternating "
          f"repeats, os.cpu_count()={os.cpu_count()}")
    print()
    print(markdown_table(
        ["case", "feed CPU ms/image, full decode", "reduced", "feed speed-up",
         "run wall s, --full-decode", "default (reduced)", "run speed-up (median of pairs)"],
        rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
