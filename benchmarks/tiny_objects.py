"""Recall and time on tiny faces: native tiles, enlarged tiles, several scales.

One large image is built from real photos (``examples/make_mosaic.py``: the astronaut's
face over face-free photos) with faces 14-36 px wide, below CenterFace's reliable size at
native scale (``ModelSpec.reliable_size``). Each row is one ``zmqvision run`` of it with
other tiling options; recall, precision and duplicates are scored against the image's
ground truth (IoU ≥ 0.3, ``examples/evaluate.py``), time is the job's own (JobStart →
JobDone, the summary line), median of ``--repeats`` runs, rows interleaved so a noisy
machine slows all alike.

    python benchmarks/tiny_objects.py [--size 4000x3000 --faces 130 --repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _common import markdown_table, run_zmqvision

ROOT = Path(__file__).resolve().parents[1]



def _min_size_label(min_size: int) -> str:
    """The row's cut and enlargement, from the catalog's reliable size (never stale)."""
    from zmqvision.models import resolve
    from zmqvision.scales import cut_for_min_size

    spec = resolve("centerface")
    cut = cut_for_min_size(spec, min_size)[0]
    return f"--min-size {min_size}: {cut} px cuts, x{spec.input_size[0] / cut:.1f}"


ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("native: 640 px cuts fed at 640 (default)", ()),
    ("native + full image (--full-pass)", ("--full-pass",)),
    (_min_size_label(20), ("--min-size", "20")),
    (_min_size_label(16), ("--min-size", "16")),
    ("--tile 320: x2", ("--tile", "320")),
    ("--tile 256: x2.5", ("--tile", "256")),
    ("--min-size 16 --scales native,full", ("--min-size", "16", "--scales", "native,full")),
]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--faces", type=int, default=130)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    score = _example("evaluate").score
    image, faces = _example("make_mosaic").make_mosaic(width, height, args.faces, (14, 36),
                                                       seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        image.save(folder / "tiny.jpg", quality=92)
        times: dict[str, list[float]] = {name: [] for name, _ in ROWS}
        quality: dict[str, tuple[int, dict]] = {}
        for rep in range(args.repeats):
            order = ROWS[rep % len(ROWS):] + ROWS[:rep % len(ROWS)]
            for name, opts in order:
                out = Path(tmp) / "r.jsonl"
                out.unlink(missing_ok=True)
                tiles, rate = run_zmqvision(folder, out, *opts)
                times[name].append(tiles / rate)
                rec = json.loads(out.read_text().splitlines()[0])
                quality[name] = (tiles, score([d["box"] for d in rec["detections"]], faces))
                print(f"  {name}: {tiles} tiles, {tiles / rate:.1f} s", file=sys.stderr)
    base = statistics.median(times[ROWS[0][0]])
    body = []
    for name, _ in ROWS:
        tiles, s = quality[name]
        t = statistics.median(times[name])
        body.append([name, str(tiles), f"{s['recall']:.2f} ({s['found']}/{s['faces']})",
                     f"{s['precision']:.2f}", str(s["duplicates"]), f"{t:.1f}",
                     f"{t / base:.1f}x"])
    print(f"{width}x{height}, {len(faces)} faces of 14-36 px, centerface at 640x640, "
          f"median of {args.repeats}")
    print(markdown_table(["tiling", "tiles", "recall", "precision", "duplicates",
                          "job s", "time ÷ native"], body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
