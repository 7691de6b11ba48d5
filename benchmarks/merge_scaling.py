"""Merge time for one image with 1k, 10k and 100k (optionally 1M) boxes, and a worst case.

Issue goal: "Merge: 100k boxes on one image merged in < 1 s; show its growth with 1k, 10k,
100k." Times ``zmqvision.merge.merge(Detections, MergeConfig(...))`` alone (what the sink
runs once per image on the concatenated tile results), median of ``--repeats`` after one
warm-up call, for the default config (nmm / ios / 0.5) and for nms / iou / 0.5.

Inputs are what a tiled detector sends for one big image (generated, seeded, no model run):

- objects spread uniformly over the image at ``--density`` objects per megapixel, sides
  log-uniform in 8–256 px, aspect ratio 1:2 to 2:1, ``--classes`` classes (Zipf-like
  frequencies), each with a base score;
- the image is cut into ``--tile`` px tiles with ``--overlap`` (``zmqvision.tiling``'s
  plan), and every tile that sees an object reports it: whole, with a box jittered by 2 %
  of its side and a score jittered by 0.03, or cut by the tile border (the visible part,
  clipped to the tile as ``to_image_coords`` does), if at least 20 % of it is visible,
  with a lower score. An object is thus reported by 1–4 tiles;
- plus 5 % false positives: small boxes in one tile only, low scores, any class.

The image side grows with N so that the density stays the same (100k boxes: about
52,000 px square, ~10,400 tiles of 640 px). The worst case piles ``--pile`` boxes on one
object (one class, 3 % jitter, random scores): every pair matches, so the number of
candidate pairs, and the work, is quadratic in the pile.

    python benchmarks/merge_scaling.py                        # 1k, 10k, 100k; ~30 s
    python benchmarks/merge_scaling.py --sizes 1000,10000,100000,1000000 --repeats 3
    python benchmarks/merge_scaling.py --pile 1000,3000,10000 --out merge.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from _common import markdown_table

from zmqvision.boxes import Detections
from zmqvision.merge import MergeConfig, merge
from zmqvision.tiling import tile_starts

CONFIGS = {
    "nmm/ios 0.5 (default)": MergeConfig(),
    "nms/iou 0.5": MergeConfig(method="nms", metric="iou", threshold=0.5),
}

MIN_SIDE, MAX_SIDE = 8.0, 256.0
VISIBLE_MIN = 0.2  # a cut object is reported if at least this share of it is in the tile
FALSE_POSITIVES = 0.05


# ---------------------------------------------------------------------------- inputs


def _objects(rng: np.random.Generator, m: int, side: float, classes: int):
    s = np.exp(rng.uniform(np.log(MIN_SIDE), np.log(MAX_SIDE), m))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), m))
    w, h = s * np.sqrt(aspect), s / np.sqrt(aspect)
    x = rng.uniform(0, side - w)
    y = rng.uniform(0, side - h)
    boxes = np.c_[x, y, x + w, y + h]
    p = 1.0 / np.arange(1, classes + 1)
    labels = rng.choice(classes, m, p=p / p.sum())
    scores = rng.uniform(0.3, 1.0, m)
    return boxes, scores, labels


def _spans(lo: np.ndarray, hi: np.ndarray, starts: np.ndarray, tile: int):
    """First and last tile (index into ``starts``) overlapping each interval [lo, hi)."""
    first = np.searchsorted(starts + tile, lo, side="right")
    last = np.searchsorted(starts, hi, side="left") - 1
    return first, last


def tiled_detections(
    n: int,
    seed: int = 0,
    *,
    tile: int = 640,
    overlap: float = 0.2,
    classes: int = 8,
    density: float = 20.0,
) -> tuple[Detections, dict]:
    """``n`` detections of one big image as the tiles of a detector report them, and facts
    about them (image side, tiles, objects, copies per object, share of cut boxes)."""
    rng = np.random.default_rng(seed)
    m = max(1, int(n / 1.8))  # a first guess of objects; corrected from what it gave
    for attempt in range(20):
        side = max(float(tile), np.sqrt(m / density) * 1000.0)
        boxes, scores, labels, obj, cut, n_tiles = _report(rng, m, side, tile, overlap, classes)
        if len(scores) >= n and (len(scores) <= 1.05 * n + 20 or attempt >= 5):
            break
        m = max(1, int(np.ceil(m * n / max(1, len(scores)) * 1.01)))
    else:
        raise RuntimeError(f"could not generate {n} boxes")
    # Down to n boxes: drop whole objects (random ones: positions are random anyway).
    order = rng.permutation(len(scores))
    order = order[np.argsort(obj[order], kind="stable")]  # false positives, then by object
    keep = np.sort(order[:n])
    obj, cut = obj[keep], cut[keep]
    true = obj >= 0
    copies = np.bincount(np.unique(obj[true], return_inverse=True)[1])
    facts = {
        "image_px": round(side),
        "tiles": n_tiles,
        "objects": len(copies),
        "false_positives": int((~true).sum()),
        "copies_mean": float(copies.mean()) if len(copies) else 0.0,
        "copies_hist": {int(k): int(v) for k, v in
                        zip(*np.unique(copies, return_counts=True), strict=True)},
        "cut_share": float(cut[true].mean()) if true.any() else 0.0,
    }
    return Detections.of(boxes[keep], scores[keep], labels[keep]), facts


def _report(rng, m: int, side: float, tile: int, overlap: float, classes: int):
    """Every tile's report of ``m`` random objects; ``obj`` is the object of each box (-1
    for a false positive), ``cut`` whether the box is a part cut by a tile border."""
    boxes, base, labels = _objects(rng, m, side, classes)
    starts = np.asarray(tile_starts(int(np.ceil(side)), tile, overlap), np.float64)
    fx, lx = _spans(boxes[:, 0], boxes[:, 2], starts, tile)
    fy, ly = _spans(boxes[:, 1], boxes[:, 3], starts, tile)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    side_of = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    out_b, out_s, out_l, out_o, out_c = [], [], [], [], []
    # Objects up to 256 px meet at most 2 tiles per axis (3 near the flush last tile).
    for dx in range(3):
        for dy in range(3):
            ob = np.flatnonzero((fx + dx <= lx) & (fy + dy <= ly))
            tx = starts[fx[ob] + dx]
            ty = starts[fy[ob] + dy]
            tb = np.c_[tx, ty, tx + tile, ty + tile]
            b = boxes[ob]
            vis = np.c_[np.maximum(b[:, :2], tb[:, :2]), np.minimum(b[:, 2:], tb[:, 2:])]
            frac = (vis[:, 2] - vis[:, 0]) * (vis[:, 3] - vis[:, 1]) / area[ob]
            seen = frac >= VISIBLE_MIN
            ob, vis, frac, tb = ob[seen], vis[seen], frac[seen], tb[seen]
            got = vis + rng.normal(0, 0.02, (len(ob), 4)) * side_of[ob, None]
            # Clipped to the tile, as the worker's to_image_coords does.
            got[:, 0::2] = np.clip(got[:, 0::2], tb[:, 0:1], tb[:, 2:3])
            got[:, 1::2] = np.clip(got[:, 1::2], tb[:, 1:2], tb[:, 3:4])
            whole = frac >= 1.0
            score = base[ob] * np.where(whole, 1.0, 0.5 + 0.5 * frac)
            out_b.append(got)
            out_s.append(np.clip(score + rng.normal(0, 0.03, len(ob)), 0.05, 1.0))
            out_l.append(labels[ob])
            out_o.append(ob)
            out_c.append(~whole)
    n_true = sum(len(o) for o in out_o)
    n_fp = int(n_true * FALSE_POSITIVES / (1 - FALSE_POSITIVES))
    fs = np.exp(rng.uniform(np.log(MIN_SIDE), np.log(48.0), (n_fp, 2)))
    fxy = rng.uniform(0, side - 48.0, (n_fp, 2))
    out_b.append(np.c_[fxy, fxy + fs])
    out_s.append(rng.uniform(0.05, 0.4, n_fp))
    out_l.append(rng.integers(0, classes, n_fp))
    out_o.append(np.full(n_fp, -1))
    out_c.append(np.zeros(n_fp, bool))
    cat = np.concatenate
    return (cat(out_b), cat(out_s), cat(out_l), cat(out_o), cat(out_c), len(starts) ** 2)


def pile(n: int, seed: int = 0) -> Detections:
    """``n`` detections of one 100 px object: every pair overlaps far above threshold."""
    rng = np.random.default_rng(seed)
    boxes = np.array([1000.0, 1000.0, 1100.0, 1100.0]) + rng.normal(0, 3.0, (n, 4))
    return Detections.of(boxes, rng.uniform(0.3, 1.0, n), np.zeros(n))


# ---------------------------------------------------------------------------- measuring


def measure(kind: str, n: int, config: str, repeats: int, warmup: bool, seed: int,
            gen: dict) -> dict:
    """Time ``merge`` on one input, in a fresh process (so peak RSS is this merge's own)."""
    import resource

    if kind == "tiled":
        dets, facts = tiled_detections(n, seed, **gen)
    else:
        dets, facts = pile(n, seed), {}
    cfg = CONFIGS[config]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    t = time.perf_counter()
    out = merge(dets, cfg)
    first = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    if not warmup:
        times.append(first)
    while len(times) < repeats:
        t = time.perf_counter()
        again = merge(dets, cfg)
        times.append(time.perf_counter() - t)
        assert len(again) == len(out)
    return {"kind": kind, "n": n, "config": config, "times": times, "first": first,
            "out": len(out), "peak_mib": peak_kib / 1024, "facts": facts}


def in_fresh_process(fn, *args) -> dict:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------- output



def rows_of(results: list[dict], pairs_column: bool = False) -> list[list[str]]:
    body, prev = [], {}
    for r in results:
        med = statistics.median(r["times"])
        p = prev.get(r["config"])
        if p is None:
            growth = exponent = "–"
        else:
            g = med / p[1]
            growth = f"{g:.1f}× for {r['n'] / p[0]:.3g}× N"
            exponent = f"{np.log(g) / np.log(r['n'] / p[0]):.2f}"
        prev[r["config"]] = (r["n"], med)
        row = [r["config"], f"{r['n']:,}", f"{med:.4f}",
               f"{min(r['times']):.4f}–{max(r['times']):.4f}", f"{r['out']:,}",
               f"{med / r['n'] * 1e6:.2f}", growth, exponent]
        if pairs_column:
            row.append(f"{r['n'] * (r['n'] - 1) // 2:,}")
        row.append(f"{r['peak_mib']:.0f}")
        body.append(row)
    return body


HEADER = ["config", "N boxes in", "s (median)", "min–max s", "boxes out", "µs per box",
          "growth vs previous N", "exponent k (t ∝ N^k)"]


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1000,10000, got {text!r}") from None
    if any(s < 0 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must not be negative")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_sizes, default=[1_000, 10_000, 100_000],
                    help="boxes per image, comma-separated (default 1000,10000,100000)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed merges per size after one warm-up (default 5)")
    ap.add_argument("--pile", type=parse_sizes, default=[1_000, 3_000, 10_000],
                    help="worst case: boxes piled on one object (default 1000,3000,10000; "
                         "10k takes ~30 s and ~2 GB per config); '0' to skip")
    ap.add_argument("--pile-repeats", type=int, default=1,
                    help="timed merges per pile size, no warm-up (default 1)")
    ap.add_argument("--tile", type=int, default=640, help="tile side in px (default 640)")
    ap.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default 0.2)")
    ap.add_argument("--classes", type=int, default=8, help="classes (default 8)")
    ap.add_argument("--density", type=float, default=20.0,
                    help="objects per megapixel (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the tables: .md (markdown) or .json")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.pile_repeats < 1:
        ap.error("--repeats and --pile-repeats must be >= 1")
    if not args.sizes or min(args.sizes) < 1:
        ap.error("--sizes must be positive")
    pile_sizes = [n for n in args.pile if n > 1]
    gen = {"tile": args.tile, "overlap": args.overlap, "classes": args.classes,
           "density": args.density}

    command = shlex.join(["benchmarks/merge_scaling.py", *(sys.argv[1:] if argv is None
                                                            else argv)])
    head = [
        f"command: {command}",
        f"machine: {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, {platform.platform()}",
        f"inputs: tiles {args.tile} px, overlap {args.overlap}, {args.classes} classes, "
        f"{args.density:g} objects/MP, sides {MIN_SIDE:g}–{MAX_SIDE:g} px, "
        f"{FALSE_POSITIVES:.0%} false positives; seed {args.seed}",
        f"timing: merge() only, median of {args.repeats} after 1 warm-up (pile: "
        f"{args.pile_repeats}, no warm-up), each size and config in a fresh process; "
        "peak RSS = growth of ru_maxrss during the first merge",
    ]
    print("\n".join(head), flush=True)

    results = []
    for n in args.sizes:
        for name in CONFIGS:
            r = in_fresh_process(measure, "tiled", n, name, args.repeats, True, args.seed, gen)
            results.append(r)
            f = r["facts"]
            hist = ", ".join(f"{k}: {v}" for k, v in f["copies_hist"].items())
            print(f"N={n:,} {name}: {statistics.median(r['times']):.4f} s -> {r['out']:,}; "
                  f"image {f['image_px']:,} px square, {f['tiles']:,} tiles, "
                  f"{f['objects']:,} objects ({f['copies_mean']:.2f} boxes each; copies "
                  f"{hist}), {f['cut_share']:.0%} of their boxes cut by a tile border, "
                  f"{f['false_positives']:,} false positives", flush=True)
    piled = []
    for n in pile_sizes:
        for name in CONFIGS:
            r = in_fresh_process(measure, "pile", n, name, args.pile_repeats, False,
                                 args.seed, gen)
            piled.append(r)
            print(f"pile N={n:,} {name}: {statistics.median(r['times']):.3f} s -> {r['out']}, "
                  f"peak RSS +{r['peak_mib']:.0f} MiB", flush=True)

    out = ["", "Realistic tiled detections (one image):", "",
           markdown_table(HEADER + ["peak RSS +MiB"], rows_of(results))]
    if piled:
        out += ["", "Worst case: N boxes piled on one object (one class; every pair matches):",
                "", markdown_table(HEADER + ["pairs N(N-1)/2", "peak RSS +MiB"],
                                   rows_of(piled, pairs_column=True))]
    default = next(iter(CONFIGS))
    at_100k = [r for r in results if r["n"] == 100_000 and r["config"] == default]
    if at_100k:
        t = statistics.median(at_100k[0]["times"])
        out += ["", f"100k boxes, {default}: {t:.3f} s (goal < 1 s: "
                f"{'met' if t < 1.0 else 'NOT met'})"]
    text = "\n".join(out)
    print(text)
    if args.out:
        path = Path(args.out)
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps({"head": head, "tiled": results, "pile": piled},
                                       indent=2))
        else:
            path.write_text("```\n" + "\n".join(head) + "\n```\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
