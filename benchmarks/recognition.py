"""Plates/s and text lines/s of the single-process references (``read_plates``,
``read_text``), and the share of their time spent in detection (stage 1: tiles, decode,
merge) vs cropping and recognition (stage 2).

Scenes are the tests' (tests/test_plates_samples.py): real scikit-image photos at
1024 × 768 with 4 plates (100-300 px wide, tilted) or 4 Latin text lines drawn on them,
and skimage's printed page. Each scene is read ``--repeat`` times after a warm-up; the
figures are medians per scene.

With ``--pipeline`` the same scenes (``--repeat`` copies of each, as PNG files) also go
through ``zmqvision run --model plates`` / ``--model ocr`` (``--workers`` workers of
``--threads`` threads each, no cache): images/s and objects/s from the job's own
seconds (its summary line), and the share of stage 2 as the difference from a run of
stage 1 alone (``--model plates-det`` / ``ppocr-v4-det``, same tiles, no crops).

    python benchmarks/recognition.py --threads 2        # ~30 s on 2 cores
    python benchmarks/recognition.py --threads 1 --pipeline --workers 2
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import markdown_table  # noqa: E402

from tests.test_plates_samples import PLATE_TEXTS, plate_scene, text_scene  # noqa: E402
from zmqvision.recognition.ctc import CtcReader  # noqa: E402
from zmqvision.recognition.plates import (  # noqa: E402
    PlateDetector,
    detect_plates,
    plate_crops,
)
from zmqvision.recognition.text import (  # noqa: E402
    TextDetector,
    detect_text,
    line_crops,
    line_quads,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def plate_scenes() -> list[np.ndarray]:
    return [plate_scene(name, list(PLATE_TEXTS[4 * (k % 3):4 * (k % 3) + 4]),
                        [100, 160, 220, 300], [0, 5, -7, 3], seed=k)[0]
            for k, name in enumerate(PHOTOS)]


def text_scenes() -> list[np.ndarray]:
    import skimage.data

    lines = ["Region based segmentation", "The quick brown fox jumps",
             "over the lazy dog 12345", "ZeroMQ moves tiles to workers"]
    out = [text_scene(name, lines, font_px=24, seed=k)[0] for k, name in enumerate(PHOTOS)]
    return [*out, np.stack([skimage.data.page()] * 3, axis=-1)]


def timed(scenes, detect, crops, read, repeat: int) -> dict:
    """Median seconds per scene of stage 1 (detect) and stage 2 (crop + read)."""
    det_s, rec_s, items = [], [], 0
    for image in scenes:  # warm-up: compile every shape once
        read(crops(image, detect(image)))
    for _ in range(repeat):
        for image in scenes:
            t0 = time.perf_counter()
            dets = detect(image)
            t1 = time.perf_counter()
            reads = read(crops(image, dets))
            t2 = time.perf_counter()
            det_s.append(t1 - t0)
            rec_s.append(t2 - t1)
            items += len(reads)
    det, rec = float(np.sum(det_s)), float(np.sum(rec_s))
    return {"items": items, "total": det + rec, "det": det, "rec": rec,
            "per_scene": (det + rec) / len(det_s), "rec_per_item": rec / max(items, 1)}


def run_seconds(inputs: Path, model: str, out: Path, workers: int, threads: int,
                device: str) -> tuple[float, int]:
    """``zmqvision run``'s job seconds (from its summary line) and the objects written."""
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(inputs), "--model", model,
                        "--out", str(out), "--no-progress", "--no-cache", "--workers",
                        str(workers), "--threads", str(threads), "--device", device],
                       capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise SystemExit(f"run --model {model} failed:\n{p.stderr[-2000:]}")
    m = re.search(r"detections in ([0-9.]+) s", p.stderr + p.stdout)
    if m is None:
        raise SystemExit(f"no summary line from run --model {model}:\n{p.stderr[-2000:]}")
    with open(out) as fh:
        objects = sum(len(json.loads(line)["detections"]) for line in fh if line.strip())
    return float(m.group(1)), objects


def pipeline_rows(args, plates_scenes, text_scenes_) -> list[list[str]]:
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory(prefix="zv-bench-rec-") as tmp:
        for pair, det, scenes in (("plates", "plates-det", plates_scenes),
                                  ("ocr", "ppocr-v4-det", text_scenes_)):
            inputs = Path(tmp) / pair
            inputs.mkdir()
            for r in range(args.repeat):
                for k, image in enumerate(scenes):
                    Image.fromarray(image).save(inputs / f"{r}-{k}.png")
            n = args.repeat * len(scenes)
            run_seconds(inputs, pair, Path(tmp) / "warm.jsonl", args.workers, args.threads,
                        args.device)  # compiles every shape once
            both, objects = run_seconds(inputs, pair, Path(tmp) / f"{pair}.jsonl",
                                        args.workers, args.threads, args.device)
            first, _ = run_seconds(inputs, det, Path(tmp) / f"{det}.jsonl", args.workers,
                                   args.threads, args.device)
            share2 = max(0.0, 1 - first / both)
            rows.append([f"run --model {pair} ({n} images)", f"{n / both:.2f}",
                         f"{objects / both:.1f}", f"{100 * (1 - share2):.0f} %",
                         f"{100 * share2:.0f} %"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--pipeline", action="store_true",
                    help="also time zmqvision run --model plates / ocr on the same scenes")
    ap.add_argument("--workers", type=int, default=2, help="workers of the pipeline runs")
    args = ap.parse_args()

    pdet = PlateDetector(threads=args.threads, device=args.device)
    prec = CtcReader("plates-rec", threads=args.threads, device=args.device)
    tdet = TextDetector(threads=args.threads, device=args.device)
    trec = CtcReader("ppocr-v4-rec", threads=args.threads, device=args.device)

    def corners(d):
        return d.landmarks if len(d) else np.zeros((0, 4, 2))

    pscenes, tscenes = plate_scenes(), text_scenes()
    # The references on the pipeline's default plan (tiles of the model input, no
    # whole-image pass), so the two do the same work.
    plates = timed(pscenes, lambda im: detect_plates(im, pdet, scales=[pdet.input_size]),
                   lambda im, d: plate_crops(im, corners(d)), prec.read, args.repeat)
    text = timed(tscenes, lambda im: detect_text(im, tdet, scales=[tdet.input_size]),
                 lambda im, d: line_crops(im, line_quads(d)) if len(d) else [],
                 trec.read, args.repeat)
    rows = []
    for what, r in (("plates (4 per 1024x768 photo)", plates),
                    ("text lines (4 per photo + page.png)", text)):
        rows.append([what, f"{r['items'] / r['total']:.1f}", f"{1000 * r['per_scene']:.0f}",
                     f"{100 * r['det'] / r['total']:.0f} %", f"{100 * r['rec'] / r['total']:.0f} %",
                     f"{1000 * r['rec_per_item']:.1f}"])
    print(f"device {args.device}, {args.threads} threads, {args.repeat} repeats")
    print(markdown_table(["reference", "items/s", "ms/image", "detection", "crop+recognition",
                          "ms per item (stage 2)"], rows))
    for what, r in (("plates", plates), ("text", text)):
        print(f"reference {what}: {1 / r['per_scene']:.2f} images/s")
    if args.pipeline:
        print(f"\npipeline: {args.workers} workers x {args.threads} threads")
        print(markdown_table(["pipeline", "images/s", "objects/s", "stage 1", "stage 2"],
                             pipeline_rows(args, pscenes, tscenes)))


if __name__ == "__main__":
    main()
