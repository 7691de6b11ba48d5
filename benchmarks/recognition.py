"""Plates/s, text lines/s and faces/s of the single-process references (``read_plates``,
``read_text``, ``identify_faces``), and the share of their time spent in detection
(stage 1: tiles, decode, merge) vs cropping and recognition (stage 2).

Scenes are the tests': real scikit-image photos at 1024 × 768 with 4 plates (100-300 px
wide, tilted) or 4 Latin text lines drawn on them, and skimage's printed page
(tests/test_plates_samples.py); for faces, test_faces_identify's 2000 × 1500 scene of
four real photos with the astronaut's face planted 10 times among 25 LFW faces, and a
temporary SQLite gallery with her enrolled from her one photo. Each scene is read
``--repeat`` times after a warm-up; the figures are sums over the repeats.

Faces also get the worker's stage 2 alone (``worker.stage2.SecondStage``, 2 requests,
the scene's aligned crops started as the worker's loop starts them): faces/s with two
queued faces sharing one MobileFaceNet inference (its batch is fixed at 2) against each
face on a request of its own (paired with a copy of itself), alternated, medians.

With ``--pipeline`` the same scenes (``--repeat`` copies of each, as PNG files) also go
through ``zmqvision run --model plates`` / ``--model ocr`` / ``--identify --gallery
<the temporary gallery>`` (``--workers`` workers of ``--threads`` threads each, no
cache): images/s and objects/s from the job's own seconds (its summary line), and the
share of stage 2 as the difference from a run of stage 1 alone (``--model plates-det`` /
``ppocr-v4-det`` / ``centerface`` without ``--identify``, same tiles, no crops). The
faces run must name the enrolled person as often as the reference does, or the script
stops (it would be measuring a broken run).

    python benchmarks/recognition.py --threads 2        # ~40 s on 2 cores
    python benchmarks/recognition.py --threads 1 --pipeline --workers 2
    python benchmarks/recognition.py --tasks faces --threads 1 --pipeline --workers 2
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import markdown_table  # noqa: E402

from tests.faces_samples import astronaut  # noqa: E402
from tests.test_faces_identify import _scene as faces_scene  # noqa: E402
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
TASKS = ("plates", "text", "faces")
NAME = "Eileen Collins"  # enrolled from skimage's astronaut photo


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
                device: str, *extra: str) -> tuple[float, list[dict]]:
    """``zmqvision run``'s job seconds (from its summary line) and the records written."""
    what = " ".join(["--model", model, *extra])
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(inputs), "--model", model,
                        "--out", str(out), "--no-progress", "--no-cache", "--workers",
                        str(workers), "--threads", str(threads), "--device", device, *extra],
                       capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise SystemExit(f"run {what} failed:\n{p.stderr[-2000:]}")
    m = re.search(r"detections in ([0-9.]+) s", p.stderr + p.stdout)
    if m is None:
        raise SystemExit(f"no summary line from run {what}:\n{p.stderr[-2000:]}")
    with open(out) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return float(m.group(1)), records


def objects_in(records: list[dict]) -> int:
    return sum(len(r["detections"]) for r in records)


def named_in(record: dict) -> int:
    """The faces of a record named as the enrolled person."""
    return sum((d.get("identity") or {}).get("name") == NAME for d in record["detections"])


def pipeline_rows(args, jobs) -> list[list[str]]:
    """One row per (label, pair job's options, stage-1 options, scenes, check)."""
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory(prefix="zv-bench-rec-") as tmp:
        for label, both_opts, first_opts, scenes, check in jobs:
            inputs = Path(tmp) / label
            inputs.mkdir()
            for r in range(args.repeat):
                for k, image in enumerate(scenes):
                    Image.fromarray(image).save(inputs / f"{r}-{k}.png")
            n = args.repeat * len(scenes)
            run_seconds(inputs, both_opts[0], Path(tmp) / "warm.jsonl", args.workers,
                        args.threads, args.device, *both_opts[1:])  # compiles every shape once
            both, records = run_seconds(inputs, both_opts[0], Path(tmp) / f"{label}.jsonl",
                                        args.workers, args.threads, args.device,
                                        *both_opts[1:])
            if check is not None:
                check(records)
            first, _ = run_seconds(inputs, first_opts[0], Path(tmp) / f"{label}-1.jsonl",
                                   args.workers, args.threads, args.device, *first_opts[1:])
            share2 = max(0.0, 1 - first / both)
            rows.append([f"run {label} ({n} images)", f"{n / both:.2f}",
                         f"{objects_in(records) / both:.1f}", f"{100 * (1 - share2):.0f} %",
                         f"{100 * share2:.0f} %"])
    return rows


class FacesReference:
    """``identify_faces``' parts on one process, with a gallery of one person enrolled
    from her one photo (a temporary SQLite file, ``url``)."""

    def __init__(self, folder: Path, threads: int, device: str) -> None:
        from zmqvision.faces.embed import FaceEmbedder
        from zmqvision.faces.gallery import Gallery
        from zmqvision.faces.identify import largest_face_embedding
        from zmqvision.models import resolve
        from zmqvision.models.runtime import Detector

        self.detector = Detector(resolve("centerface"), threads=threads, device=device)
        self.embedder = FaceEmbedder(threads=threads, device=device)
        self.url = f"sqlite://{folder / 'faces.sqlite3'}"
        self.gallery = Gallery.open(self.url)
        emb, _ = largest_face_embedding(astronaut(), self.detector, self.embedder)
        self.gallery.enroll(NAME, emb[None], {"photos": ["astronaut.png"]})
        self.scales = [self.detector.input_size]  # the pipeline's default plan

    def identify(self, image: np.ndarray):
        from zmqvision.faces.identify import identify_faces

        return identify_faces(image, self.detector, self.embedder, self.gallery,
                              scales=self.scales)

    def detect(self, image: np.ndarray):
        from zmqvision.faces.identify import detect_faces

        return detect_faces(image, self.detector, scales=self.scales)

    @staticmethod
    def crops(image: np.ndarray, dets) -> np.ndarray:
        from zmqvision.faces.align import align_many

        return align_many(image, dets.landmarks) if len(dets) else np.zeros((0, 112, 112, 3),
                                                                            np.uint8)

    def embed_and_match(self, crops: np.ndarray) -> list:
        if not len(crops):
            return []
        return self.gallery.best(self.embedder.embed(crops))

    def close(self) -> None:
        self.gallery.close()


def second_stage_rate(runner, crops: np.ndarray, pairs: bool, requests: int = 2,
                      rounds: int = 3) -> float:
    """Faces/s of the worker's stage 2 alone: ``rounds`` × the crops through a
    ``SecondStage`` of ``requests`` requests, started as the worker's loop starts them
    (every crop there is room for, then ``flush``), each completion freeing a slot."""
    from zmqvision import protocol
    from zmqvision.worker.stage2 import SecondStage

    stage = SecondStage(runner, requests, pairs=pairs)
    tiles = [protocol.Tile(job="j", image="i", index=k, box=(0.0, 0.0, 112.0, 112.0),
                           scale=1.0, model=runner.ref, pixels=c, encoding="raw",
                           task={"stage": 2}) for k, c in enumerate(crops)] * rounds
    try:
        t0 = time.perf_counter()
        started = answered = 0
        while answered < len(tiles):
            while started < len(tiles) and stage.has_room():
                stage.start(0, tiles[started])
                started += 1
            stage.flush()
            done = stage.wait_completion(60)
            if done is None or done.error is not None:
                raise SystemExit(f"stage 2 failed: {done}")
            answered += 1 + len(stage.completed())
        return len(tiles) / (time.perf_counter() - t0)
    finally:
        stage.close()


def second_stage_rows(crops: np.ndarray, threads: int, device: str,
                      runs: int = 5) -> list[list[str]] | None:
    """Paired vs unpaired stage-2 faces/s, alternated, medians (None: a SecondStage
    without ``pairs``, i.e. before pairing existed)."""
    from zmqvision.tasks.stage2 import Stage2Runner
    from zmqvision.worker.stage2 import SecondStage

    if "pairs" not in inspect.signature(SecondStage).parameters:
        return None
    runner = Stage2Runner("mobilefacenet", threads=threads, device=device)
    second_stage_rate(runner, crops, True, rounds=1)  # warm-up
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for pairs in (False, True):
            rates[pairs].append(second_stage_rate(runner, crops, pairs))
    return [[f"SecondStage, {label}", f"{statistics.median(rates[p]):.0f}",
             f"{min(rates[p]):.0f}-{max(rates[p]):.0f}"]
            for label, p in (("each face alone (with a copy of itself)", False),
                             ("two queued faces per inference", True))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help=f"which of {', '.join(TASKS)} to time (comma-separated)")
    ap.add_argument("--pipeline", action="store_true",
                    help="also time zmqvision run --model plates / ocr / --identify on the "
                         "same scenes")
    ap.add_argument("--workers", type=int, default=2, help="workers of the pipeline runs")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks or set(tasks) - set(TASKS):
        ap.error(f"--tasks: some of {', '.join(TASKS)}")

    def corners(d):
        return d.landmarks if len(d) else np.zeros((0, 4, 2))

    tmp = tempfile.TemporaryDirectory(prefix="zv-bench-faces-")
    results, rows, jobs, stage2_rows = {}, [], [], None
    # The references on the pipeline's default plan (tiles of the model input, no
    # whole-image pass), so the two do the same work.
    if "plates" in tasks:
        pdet = PlateDetector(threads=args.threads, device=args.device)
        prec = CtcReader("plates-rec", threads=args.threads, device=args.device)
        pscenes = plate_scenes()
        results["plates (4 per 1024x768 photo)"] = timed(
            pscenes, lambda im: detect_plates(im, pdet, scales=[pdet.input_size]),
            lambda im, d: plate_crops(im, corners(d)), prec.read, args.repeat)
        jobs.append(("--model plates", ["plates"], ["plates-det"], pscenes, None))
    if "text" in tasks:
        tdet = TextDetector(threads=args.threads, device=args.device)
        trec = CtcReader("ppocr-v4-rec", threads=args.threads, device=args.device)
        tscenes = text_scenes()
        results["text lines (4 per photo + page.png)"] = timed(
            tscenes, lambda im: detect_text(im, tdet, scales=[tdet.input_size]),
            lambda im, d: line_crops(im, line_quads(d)) if len(d) else [],
            trec.read, args.repeat)
        jobs.append(("--model ocr", ["ocr"], ["ppocr-v4-det"], tscenes, None))
    if "faces" in tasks:
        faces = FacesReference(Path(tmp.name), args.threads, args.device)
        fscenes = [faces_scene()[0]]
        named = [sum(f.name == NAME for f in faces.identify(im)) for im in fscenes]
        if min(named) < 9:  # the test asks 9 of her 10 plants named
            raise SystemExit(f"the reference names her {named} times: a broken reference")
        results["faces (35 planted in a 2000x1500 scene)"] = timed(
            fscenes, faces.detect, faces.crops, faces.embed_and_match, args.repeat)
        crops = faces.crops(fscenes[0], faces.detect(fscenes[0]))
        stage2_rows = second_stage_rows(crops, args.threads, args.device)

        def check(records, want=sum(named) * args.repeat):
            got = sum(named_in(r) for r in records)
            if got != want or any(r.get("error") for r in records):
                raise SystemExit(f"run --identify named her {got} times, the reference "
                                 f"{want}: a broken run, not measured")

        jobs.append(("--identify", ["centerface", "--identify", "--gallery", faces.url],
                     ["centerface"], fscenes, check))
    for what, r in results.items():
        rows.append([what, f"{r['items'] / r['total']:.1f}", f"{1000 * r['per_scene']:.0f}",
                     f"{100 * r['det'] / r['total']:.0f} %", f"{100 * r['rec'] / r['total']:.0f} %",
                     f"{1000 * r['rec_per_item']:.1f}"])
    print(f"device {args.device}, {args.threads} threads, {args.repeat} repeats")
    print(markdown_table(["reference", "items/s", "ms/image", "detection", "crop+recognition",
                          "ms per item (stage 2)"], rows))
    for what, r in results.items():
        print(f"reference {what}: {1 / r['per_scene']:.2f} images/s")
    if stage2_rows is not None:
        print(f"\nworker stage 2 alone, {len(crops)} faces x 3, 2 requests, "
              f"{args.threads} threads (medians of 5, alternated)")
        print(markdown_table(["MobileFaceNet", "faces/s", "range"], stage2_rows))
    if args.pipeline:
        print(f"\npipeline: {args.workers} workers x {args.threads} threads")
        print(markdown_table(["pipeline", "images/s", "objects/s", "stage 1", "stage 2"],
                             pipeline_rows(args, jobs)))
    if "faces" in tasks:
        faces.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
