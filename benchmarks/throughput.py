"""Throughput of the zmqvision pipeline against OpenVINO's own limit, in one table.

Rows (tiles or frames per second; median and min-max over ``--repeats`` runs, interleaved
so that a noisy machine slows every row alike):

- ``benchmark_app``: OpenVINO's ``benchmark_app -hint throughput`` on the same model file
  and input size: inference only, random input, no decode/tile/transport. The limit.
- ``ventilator feed``: decode + plan + cut every tile in one thread, nothing sent: how fast
  the ventilator could feed workers if they were infinitely fast.
- ``naive loop``: one process, no ZeroMQ: read_image -> plan_tiles -> cut_tile ->
  ``Detector(hint="LATENCY").infer`` (synchronous) -> to_image_coords -> merge.
- ``zmqvision run, N worker(s)``: ``zmqvision.run.run_job`` (what ``zmqvision run`` runs:
  sink and worker processes, real sockets). Three rates per run:
  *steady*: tiles finished between the sink's first Progress with a finished tile and the
  last record, over that time (excludes process start and model compile);
  *JobDone*: tiles / ``JobDone.seconds`` (the number ``zmqvision run`` prints; the clock
  starts at the sink's JobStart, sent once every worker has announced it is ready);
  *wall*: tiles / wall time of ``run_job`` (process start, compile, shutdown included).

The headline is ``steady ÷ benchmark_app`` (median over repeats of the per-repeat ratio).

    python benchmarks/throughput.py                      # ssd-mobilenetv2-oid, 3 repeats
    python benchmarks/throughput.py --model centerface --images 4
    python benchmarks/throughput.py --model efficientnet-lite0 --images 300 --size 640x480

Its 1920x1080 images are 40 tiles each, which hides every per-image cost; the workload
users have most, many ordinary images of one tile each, has its own table:

    python benchmarks/throughput.py --small-images       # = small_images.py --model all

A classifier (``efficientnet-lite0``) sees each image whole, one tile per image
(``zmqvision.tasks.classification``): its rows count images, and the feed and naive rows
cut and infer the way its task does (stretched cuts, ``Classifier.infer``, top 5).

A segmenter (``deeplabv3``, ``selfie-segmentation``) tiles as its task plans
(``zmqvision.tasks.segmentation``: a grid of input-sized cuts for images over twice the
input); the naive row is ``segment.segment_image`` (sync infer and the same stitching, no
PNG), and the pipeline rows write every mask (``--masks``), as users run it:

    python benchmarks/throughput.py --model deeplabv3 --images 4 --size 1024x768
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import free_port

# ---------------------------------------------------------------------------- inputs

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def make_inputs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` JPEGs of ``size`` tiled from scikit-image's bundled photos (no download).

    Each canvas is covered with rows of randomly chosen, scaled and flipped photos, so
    every image is different (different content hashes) and has real texture everywhere.
    """
    from PIL import Image
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in PHOTOS]
    width, height = size
    paths = []
    for i in range(n):
        canvas = Image.new("RGB", (width, height))
        y = 0
        while y < height:
            row_h = int(rng.integers(max(64, height // 4), max(65, height // 2)))
            x = 0
            while x < width:
                photo = photos[int(rng.integers(len(photos)))]
                w = max(1, round(photo.width * row_h / photo.height))
                cell = photo.resize((w, row_h), Image.BILINEAR)
                if rng.random() < 0.5:
                    cell = cell.transpose(Image.FLIP_LEFT_RIGHT)
                canvas.paste(cell, (x, y))
                x += w
            y += row_h
        path = folder / f"bench_{i:03d}.jpg"
        canvas.save(path, quality=90)
        paths.append(path)
    return paths


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_workers(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1, got {text!r}")
    return out


# ---------------------------------------------------------------------------- benchmark_app


def benchmark_app_cmd(model_path: Path, spec, seconds: int) -> list[str]:
    exe = Path(sys.executable).parent / "benchmark_app"
    cmd = [str(exe), "-m", str(model_path), "-d", "CPU", "-hint", "throughput",
           "-t", str(seconds)]
    if spec.input_multiple is not None:  # reshapeable (CenterFace ships [10,3,32,32])
        w, h = spec.input_size
        shape = f"[1,3,{h},{w}]" if spec.preprocess.layout == "NCHW" else f"[1,{h},{w},3]"
        cmd += ["-shape", shape]
    return cmd


def run_benchmark_app(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return parse_benchmark_app(proc.returncode, proc.stdout + proc.stderr)


def parse_benchmark_app(returncode: int, text: str) -> dict:
    """FPS and request count from benchmark_app's output; raises if it failed."""
    m = re.search(r"Throughput:\s*([0-9.]+)\s*FPS", text)
    if returncode != 0 or not m:
        raise RuntimeError(f"benchmark_app failed (rc {returncode}):\n{text[-2000:]}")
    req = re.search(r"(\d+) inference requests", text)
    return {"fps": float(m.group(1)), "requests": int(req.group(1)) if req else None}


# ---------------------------------------------------------------------------- in-process rows


def _tiles_of(paths: list[str], tile_size, overlap: float, model: str | None = None) -> int:
    from zmqvision.io import read_image
    from zmqvision.tiling import plan_tiles

    if model is not None and _classifier_plan(model, overlap) is not None:
        return len(paths)  # one whole-image tile each
    if model is not None and _segmenter_plan(model, overlap) is not None:
        plan = _segmenter_plan(model, overlap)
        return sum(len(plan.tiles(img.width, img.height))
                   for img in (read_image(p) for p in paths))
    n = 0
    for p in paths:
        img = read_image(p)
        n += len(plan_tiles(img.width, img.height, tile_size, overlap))
    return n


def _classifier_plan(model: str, overlap: float):
    """The job plan of a classification model (whole images), None for a detector."""
    from zmqvision.plan import JobPlan, JobSettings

    plan = JobPlan(JobSettings(model=model, overlap=overlap))
    return plan if plan.spec.task == "classification" else None


def _segmenter_plan(model: str, overlap: float):
    """The job plan of a segmentation model, None for any other."""
    from zmqvision.plan import JobPlan, JobSettings

    plan = JobPlan(JobSettings(model=model, overlap=overlap))
    return plan if plan.spec.task == "segmentation" else None


def classify_feed_loop(paths: list[str], model: str, overlap: float) -> dict:
    """``feed_loop`` for a classifier or a segmenter: decode (reduced as the job would) and
    cut as the task does."""
    from zmqvision.inputs import load_path

    plan = _classifier_plan(model, overlap) or _segmenter_plan(model, overlap)
    t0 = time.perf_counter()
    t_decode = 0.0
    n = 0
    for p in paths:
        d0 = time.perf_counter()
        img = load_path(p, plan.settings.max_pixels, reduce=plan.reducer()).image
        t_decode += time.perf_counter() - d0
        for tile in plan.tiles(img.width, img.height):
            plan.cut(img.pixels, tile, img.reduced)
            n += 1
    return {"tiles": n, "seconds": time.perf_counter() - t0, "decode_s": t_decode}


def classify_naive_loop(paths: list[str], model: str, overlap: float) -> dict:
    """``naive_loop`` for a classifier: decode, stretch, synchronous top-5."""
    from zmqvision.inputs import load_path
    from zmqvision.models import Classifier, ensure

    plan = _classifier_plan(model, overlap)
    spec = plan.spec
    c0 = time.perf_counter()
    net = Classifier(spec, hint="LATENCY", model_path=ensure(spec))
    compile_s = time.perf_counter() - c0
    net.infer(np.zeros((spec.input_size[1], spec.input_size[0], 3), np.uint8))  # warm
    n = 0
    t0 = time.perf_counter()
    for p in paths:
        img = load_path(p, plan.settings.max_pixels, reduce=plan.reducer()).image
        for tile in plan.tiles(img.width, img.height):
            net.infer(plan.cut(img.pixels, tile, img.reduced)[0], 5)
            n += 1
    dt = time.perf_counter() - t0
    return {"tiles": n, "seconds": dt, "compile_s": compile_s, "detections": 0}


def segment_naive_loop(paths: list[str], model: str, overlap: float) -> dict:
    """``naive_loop`` for a segmenter: decode, then ``segment_image`` (the pipeline's
    tiles, synchronous infer, the sink's stitching; no PNG)."""
    from zmqvision.inputs import load_path
    from zmqvision.models import ensure
    from zmqvision.segment import Segmenter, segment_image

    plan = _segmenter_plan(model, overlap)
    spec = plan.spec
    c0 = time.perf_counter()
    seg = Segmenter(spec, hint="LATENCY", model_path=ensure(spec))
    compile_s = time.perf_counter() - c0
    seg.infer(np.zeros((spec.input_size[1], spec.input_size[0], 3), np.uint8))  # warm
    n = 0
    t0 = time.perf_counter()
    for p in paths:
        img = load_path(p, plan.settings.max_pixels).image
        tiles = plan.tiles(img.width, img.height)
        segment_image(img.pixels, seg, tiles=tiles, overlap=overlap, keep_labels=False)
        n += len(tiles)
    dt = time.perf_counter() - t0
    return {"tiles": n, "seconds": dt, "compile_s": compile_s, "detections": 0}


def feed_loop(paths: list[str], model: str, overlap: float) -> dict:
    """What the ventilator's loop does per tile, minus the socket: decode, plan, cut."""
    from zmqvision.io import read_image
    from zmqvision.models import resolve
    from zmqvision.tiling import cut_tile, plan_tiles

    spec = resolve(model)
    t0 = time.perf_counter()
    t_decode = 0.0
    n = 0
    for p in paths:
        d0 = time.perf_counter()
        img = read_image(p)
        t_decode += time.perf_counter() - d0
        for tile in plan_tiles(img.width, img.height, spec.input_size, overlap):
            cut_tile(img.pixels, tile, spec.input_size)
            n += 1
    dt = time.perf_counter() - t0
    return {"tiles": n, "seconds": dt, "decode_s": t_decode}


def naive_loop(paths: list[str], model: str, overlap: float) -> dict:
    """Single process: decode -> tile -> synchronous infer -> merge (run in a fresh process)."""
    from zmqvision.boxes import Detections
    from zmqvision.io import read_image
    from zmqvision.merge import merge_partials
    from zmqvision.models import Detector, ensure, resolve
    from zmqvision.tiling import cut_tile, plan_tiles, to_image_coords

    spec = resolve(model)
    c0 = time.perf_counter()
    detector = Detector(spec, hint="LATENCY", model_path=ensure(spec))
    compile_s = time.perf_counter() - c0
    detector.infer(np.zeros((spec.input_size[1], spec.input_size[0], 3), np.uint8))  # warm
    n = dets = 0
    t0 = time.perf_counter()
    for p in paths:
        img = read_image(p)
        parts = []
        for tile in plan_tiles(img.width, img.height, spec.input_size, overlap):
            pixels, scale = cut_tile(img.pixels, tile, spec.input_size)
            d = detector.infer(pixels)
            parts.append(Detections(to_image_coords(d.boxes, tile.box, scale), d.scores,
                                    d.labels))
            n += 1
        dets += len(merge_partials(parts))
    dt = time.perf_counter() - t0
    return {"tiles": n, "seconds": dt, "compile_s": compile_s, "detections": dets}


def in_fresh_process(fn, *args) -> dict:
    """Run ``fn`` in a new interpreter, so no OpenVINO thread pool outlives its row."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------- pipeline




class _HeartbeatProbe(threading.Thread):
    """Subscribes to the sink's events and keeps every worker Heartbeat (in_flight, queue)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.beats: list = []
        self._halt = threading.Event()

    def run(self) -> None:
        import zmq

        from zmqvision import protocol

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, protocol.MsgType.HEARTBEAT.tag)
        sub.connect(self.endpoint)
        try:
            while not self._halt.is_set():
                if sub.poll(100):
                    try:
                        msg = protocol.decode(sub.recv_multipart())
                    except protocol.ProtocolError:
                        continue
                    if isinstance(msg, protocol.Heartbeat):
                        self.beats.append((time.monotonic(), msg))
        finally:
            sub.close(linger=0)
            ctx.term()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def pipeline_run(folder: Path, model: str, workers: int, overlap: float,
                 probe: bool = False) -> dict:
    """One ``run_job`` (the embedded ``zmqvision run``); returns its three rates."""
    from zmqvision.merge import MergeConfig
    from zmqvision.run import RunPlan, run_job
    from zmqvision.sink import SinkConfig
    from zmqvision.ventilator import VentilateConfig
    from zmqvision.worker import WorkerConfig

    progress: list = []
    with tempfile.TemporaryDirectory(prefix="zv-bench-out-") as tmp:
        port = free_port()
        events = f"tcp://127.0.0.1:{port}"
        plan = RunPlan(
            job=VentilateConfig(inputs=(str(folder),), model=model, overlap=overlap,
                                merge=MergeConfig()),
            sink=SinkConfig(out=os.path.join(tmp, "results.jsonl"), events=events,
                            events_fallback="tcp://127.0.0.1:0",
                            masks=os.path.join(tmp, "masks")),  # (segmentation only)
            worker=WorkerConfig(model=model),
            workers=workers,
        )
        hb = _HeartbeatProbe(events) if probe else None
        if hb is not None:
            hb.start()
        t0 = time.perf_counter()
        try:
            done = run_job(plan, on_progress=progress.append)
        finally:
            if hb is not None:
                hb.stop()
        wall = time.perf_counter() - t0
    first = next((p for p in progress if p.tiles_done > 0 and p.elapsed < done.seconds), None)
    if first is not None and done.tiles > first.tiles_done:
        steady = (done.tiles - first.tiles_done) / (done.seconds - first.elapsed)
        first_at = first.elapsed
    else:  # too short to see a Progress in between: fall back to the whole job
        steady, first_at = done.tiles / done.seconds, 0.0
    out = {
        "tiles": done.tiles, "failed": done.failed, "detections": done.detections,
        "job_seconds": done.seconds, "wall_seconds": wall, "first_tile_at": first_at,
        "steady": steady, "jobdone": done.tiles / done.seconds, "wall": done.tiles / wall,
    }
    if hb is not None:
        beats = [b for _, b in hb.beats if b.tiles_done > 0]
        if beats:
            out["in_flight_mean"] = statistics.fmean(b.in_flight for b in beats)
            out["requests"] = sum(
                max(getattr(b, "requests", 0) or b.queue for b in beats if b.worker == w)
                for w in {b.worker for b in beats})
    return out


# ---------------------------------------------------------------------------- table


@dataclass
class Row:
    what: str
    values: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    note: str = ""

    def cells(self, bench: bool) -> list[str]:
        if not self.values:
            return [self.what, "-", "-", "-", self.note]
        med = statistics.median(self.values)
        span = f"{min(self.values):.1f}–{max(self.values):.1f}"
        ratio = "1.00" if bench else (
            f"{statistics.median(self.ratios):.2f}" if self.ratios else "-")
        return [self.what, f"{med:.1f}", span, ratio, self.note]


def render(rows: list[Row], bench_row: Row) -> str:
    header = ["what", "tiles/s (median)", "min–max", "÷ benchmark_app", "notes"]
    body = [r.cells(r is bench_row) for r in rows]
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)])


def machine_facts() -> dict:
    import openvino as ov

    core = ov.Core()
    try:
        cpu = core.get_property("CPU", "FULL_DEVICE_NAME")
    except Exception:
        cpu = platform.processor() or "?"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "usable_cpus": usable, "cpu": cpu,
            "openvino": ov.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


# ---------------------------------------------------------------------------- main


def _label(workers: int) -> str:
    return f"zmqvision run, {workers} worker{'s' if workers > 1 else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ssd-mobilenetv2-oid",
                    help="catalog model (default: %(default)s); centerface runs at 640x640")
    ap.add_argument("--repeats", type=int, default=3, help="runs of every row (default 3)")
    ap.add_argument("--images", type=int, default=8, help="generated images (default 8)")
    ap.add_argument("--size", type=parse_size, default=(1920, 1080),
                    help="generated image size WxH (default 1920x1080)")
    ap.add_argument("--workers", type=parse_workers, default=[1, 2],
                    help="worker counts for zmqvision run, comma-separated (default 1,2)")
    ap.add_argument("--bench-seconds", type=int, default=10,
                    help="benchmark_app -t per repeat (default 10)")
    ap.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default 0.2)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop row")
    ap.add_argument("--no-probe", action="store_true",
                    help="do not subscribe to worker heartbeats (mean in_flight per worker)")
    ap.add_argument("--out", help="also write the table: .md (markdown) or .json")
    ap.add_argument("--small-images", action="store_true",
                    help="the many-small-images table instead (benchmarks/small_images.py "
                         "--model all): single-tile JPEGs of SSD, CenterFace and BlazeFace, "
                         "the plain loop, 1 and 2 workers, the limit, CPU per role")
    args = ap.parse_args(argv)
    if args.small_images:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import small_images

        return small_images.main(["--model", "all", "--repeats", str(args.repeats),
                                  "--workers", ",".join(map(str, args.workers)),
                                  "--bench-seconds", str(args.bench_seconds)])
    if args.repeats < 1 or args.images < 1:
        ap.error("--repeats and --images must be >= 1")

    from zmqvision.models import ensure, resolve

    spec = resolve(args.model)
    model_path = Path(ensure(spec, log=lambda m: print(m, file=sys.stderr)))
    facts = machine_facts()
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    bench_cmd = benchmark_app_cmd(model_path, spec, args.bench_seconds)
    variants = list(args.workers)

    with tempfile.TemporaryDirectory(prefix="zv-bench-in-") as tmp:
        folder = Path(tmp)
        paths = [str(p) for p in make_inputs(folder, args.images, args.size)]
        n_tiles = _tiles_of(paths, spec.input_size, args.overlap, args.model)
        task = spec.task
        feed_fn = feed_loop if task == "detection" else classify_feed_loop
        naive_fn = {"classification": classify_naive_loop,
                    "segmentation": segment_naive_loop}.get(task, naive_loop)
        head = [
            f"command: {command}",
            f"machine: {facts['cpu']}, os.cpu_count()={facts['cpu_count']} "
            f"(usable {facts['usable_cpus']}), OpenVINO {facts['openvino']}, "
            f"Python {facts['python']}, {facts['platform']}",
            f"model: {spec.ref} ({model_path.name}), input {spec.input_size[0]}x"
            f"{spec.input_size[1]}; {args.images} images {args.size[0]}x{args.size[1]}, "
            f"overlap {args.overlap} -> {n_tiles} tiles per run; {args.repeats} repeats",
            f"benchmark_app: {' '.join(shlex.quote(c) for c in bench_cmd[1:])}",
        ]
        print("\n".join(head), flush=True)

        # Warm-up, not timed: OpenVINO's blob cache gets every worker configuration.
        for w in variants:
            pipeline_run(folder, args.model, w, args.overlap)

        bench = Row("benchmark_app -hint throughput (limit)")
        feed = Row("ventilator feed only (decode+tile, 1 thread, no send)")
        naive = Row("naive loop (1 process, sync infer, LATENCY hint)")
        pipes = {v: (Row(f"{_label(v)}: steady"), Row(f"{_label(v)}: JobDone"),
                     Row(f"{_label(v)}: wall"))
                 for v in variants}
        raw: list[dict] = []
        steps: list = ["bench", "feed", *([] if args.no_naive else ["naive"]), *variants]
        for r in range(args.repeats):
            order = steps[r % len(steps):] + steps[:r % len(steps)]  # rotate: spread drift
            got: dict = {}
            for step in order:
                if step == "bench":
                    got[step] = run_benchmark_app(bench_cmd)
                elif step == "feed":
                    got[step] = in_fresh_process(feed_fn, paths, args.model, args.overlap)
                elif step == "naive":
                    got[step] = in_fresh_process(naive_fn, paths, args.model, args.overlap)
                else:
                    got[step] = pipeline_run(folder, args.model, step, args.overlap,
                                             probe=not args.no_probe)
            fps = got["bench"]["fps"]
            bench.values.append(fps)
            bench.note = f"{got['bench']['requests']} requests, -t {args.bench_seconds}"
            f = got["feed"]
            feed.values.append(f["tiles"] / f["seconds"])
            feed.ratios.append(feed.values[-1] / fps)
            cut_ms = 1000 * (f["seconds"] - f["decode_s"]) / f["tiles"]
            feed.note = (f"decode {1000 * f['decode_s'] / len(paths):.0f} ms/image, "
                         f"cut {cut_ms:.2f} ms/tile")
            if "naive" in got:
                naive.values.append(got["naive"]["tiles"] / got["naive"]["seconds"])
                naive.ratios.append(naive.values[-1] / fps)
                naive.note = f"compile {got['naive']['compile_s']:.1f} s not counted"
            for v in variants:
                p = got[v]
                steady, jobdone, wall = pipes[v]
                for row, key in ((steady, "steady"), (jobdone, "jobdone"), (wall, "wall")):
                    row.values.append(p[key])
                    row.ratios.append(p[key] / fps)
                steady.note = f"1st tile done {p['first_tile_at']:.1f} s after JobStart"
                if "in_flight_mean" in p:
                    steady.note += (f"; in_flight {p['in_flight_mean']:.2f}/worker, "
                                    f"{p['requests']} requests in all")
                jobdone.note = f"job {p['job_seconds']:.1f} s"
                wall.note = f"wall {p['wall_seconds']:.1f} s"
            raw.append({(k if isinstance(k, str) else _label(k)): v for k, v in got.items()})
            summary = ", ".join(
                f"{k}={v.get('fps') or v.get('steady') or v['tiles'] / v['seconds']:.1f}"
                for k, v in raw[-1].items())
            print(f"repeat {r + 1}/{args.repeats}: {summary}", file=sys.stderr, flush=True)

    rows = [bench, feed, *([] if args.no_naive else [naive])]
    for v in variants:
        rows += list(pipes[v])
    table = render(rows, bench)
    headline = (f"pipeline ÷ benchmark_app (steady, median of {args.repeats}): "
                + "; ".join(f"{_label(v)} {statistics.median(pipes[v][0].ratios):.2f}"
                            for v in variants)
                + " (bar 0.7, goal 0.9)")
    print()
    print(table)
    print()
    print(headline)
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() == ".json":
            out.write_text(json.dumps({"head": head, "facts": facts, "headline": headline,
                                       "rows": [r.__dict__ for r in rows], "raw": raw},
                                      indent=2, default=str))
        else:
            out.write_text("```\n" + "\n".join(head) + "\n```\n\n" + table + "\n\n"
                           + headline + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
