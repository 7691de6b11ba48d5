"""Many small images: `zmqvision run` over a folder of single-tile JPEGs, against OpenVINO's
limit and against the short loop a user could write instead, with each role's CPU per image.

Rows (images per second; median and min–max over ``--repeats`` rounds, interleaved so a
noisy machine slows every row alike; ratios are taken per round, side by side):

- ``benchmark_app``: ``benchmark_app -hint throughput`` on the model at its input size:
  inference only, random input. The limit.
- ``plain loop``: one process, the user's alternative: PIL decode and resize to the model
  input, ``AsyncInferQueue`` with the THROUGHPUT hint, raw outputs, no post-processing.
- ``zmqvision run, N worker(s)``: ``zmqvision run DIR`` as a command (``--no-progress``,
  no result cache), wall time of the whole command and images / ``JobDone.seconds``.
- CPU per image of each role: ``zmqvision sink``, ``worker`` and ``ventilate`` run as
  three commands over the same folder, each one's user+system time from ``wait4``.

    python benchmarks/small_images.py                               # ssd-mobilenetv2-oid
    python benchmarks/small_images.py --model blazeface-short --images 2000
    python benchmarks/small_images.py --model centerface --images 300 --repeats 3
    python benchmarks/small_images.py --model all                   # the three of issue 18
    python benchmarks/small_images.py --roles-only --repeats 2      # CPU per role only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
ZV = [sys.executable, "-m", "zmqvision"]


def make_inputs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """``n`` JPEGs of exactly ``size``: random crops of scikit-image's bundled photos,
    scaled, so every image differs (no two share a content hash)."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skdata, p)()).convert("RGB") for p in PHOTOS]
    for i in range(n):
        im = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(min(im.size) // 3, min(im.size)))
        x, y = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize(size, Image.BILINEAR)
        crop.save(folder / f"small_{i:05d}.jpg", quality=90)


def benchmark_app_cmd(model: str, *run: str) -> list[str]:
    """``benchmark_app`` on the model's file at its input size (throughput hint, CPU),
    then ``run`` (how long: ``-t S`` or ``-niter N``)."""
    from zmqvision.models import ensure, resolve

    spec = resolve(model)
    cmd = [str(Path(sys.executable).parent / "benchmark_app"), "-m", str(ensure(spec)),
           "-d", "CPU", "-hint", "throughput", *run]
    if spec.input_multiple is not None:
        w, h = spec.input_size
        cmd += ["-shape", f"[1,3,{h},{w}]" if spec.preprocess.layout == "NCHW"
                else f"[1,{h},{w},3]"]
    return cmd


def benchmark_app(model: str, seconds: int) -> float:
    p = subprocess.run(benchmark_app_cmd(model, "-t", str(seconds)), capture_output=True,
                       text=True, cwd=tempfile.gettempdir())
    m = re.search(r"Throughput:\s*([0-9.]+)\s*FPS", p.stdout + p.stderr)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"benchmark_app failed:\n{(p.stdout + p.stderr)[-2000:]}")
    return float(m.group(1))


PLAIN_LOOP = r'''
import sys, time, pathlib, numpy as np, openvino as ov
from PIL import Image
from zmqvision.models import ensure, resolve
from zmqvision.models.runtime import build_model
spec = resolve(sys.argv[1]); w, h = spec.input_size
core = ov.Core()
model = build_model(core.read_model(str(ensure(spec))), spec)
compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
done = []
queue = ov.AsyncInferQueue(compiled)
queue.set_callback(lambda req, i: done.append([req.get_output_tensor(k).data.copy()
                                                for k in range(len(compiled.outputs))]))
paths = sorted(pathlib.Path(sys.argv[2]).glob("*.jpg"))
t0 = time.perf_counter()
for p in paths:
    img = np.asarray(Image.open(p).convert("RGB").resize((w, h)))
    queue.start_async({0: img[None]})
queue.wait_all()
print(len(done) / (time.perf_counter() - t0))
'''


def inference_cpu_ms(model: str, n: int = 1000) -> float:
    """CPU milliseconds of one inference by ``benchmark_app`` (throughput hint): its CPU over
    ``n + 100`` iterations less its CPU over 100, so start-up and compilation cancel out.
    What a worker spends beyond this is its own cost per tile."""
    cpu = []
    for iters in (100, n + 100):
        p = subprocess.Popen(benchmark_app_cmd(model, "-niter", str(iters)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=tempfile.gettempdir())
        cpu.append(_cpu_of(p))
    return (cpu[1] - cpu[0]) * 1000 / n


def plain_loop(model: str, folder: Path) -> float:
    p = subprocess.run([sys.executable, "-c", PLAIN_LOOP, model, str(folder)],
                       capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return float(p.stdout.strip().splitlines()[-1])


def zv_run(model: str, folder: Path, workers: int, n: int) -> tuple[float, float]:
    """(images/s of the whole command, images/s by JobDone.seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.jsonl")
        t0 = time.perf_counter()
        p = subprocess.run([*ZV, "run", str(folder), "--model", model, "--workers",
                            str(workers), "--out", out, "--no-progress", "--no-cache",
                            "--events", "tcp://127.0.0.1:0"],
                           capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
    m = re.search(r"in ([0-9.]+) s", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"run failed:\n{p.stdout}\n{p.stderr[-2000:]}")
    return n / wall, n / float(m.group(1))


def _cpu_of(proc: subprocess.Popen) -> float:
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_utime + usage.ru_stime


def _announced(proc: subprocess.Popen) -> dict:
    return json.loads(proc.stdout.readline())["ready"]


def role_cpu(model: str, folder: Path, n: int) -> dict[str, float]:
    """CPU milliseconds per image of the sink, a worker and the ventilator, each its own
    command over ipc endpoints; each role's start-up and shut-down (imports, model
    compilation), measured on a job of one image in the same way, is taken off first."""
    import shutil

    with tempfile.TemporaryDirectory() as one:
        shutil.copy(min(folder.glob("*.jpg")), one)
        fixed = _role_seconds(model, Path(one))
    busy = _role_seconds(model, folder)
    return {k: (busy[k] - fixed[k]) * 1000 / (n - 1) for k in busy}


def _role_seconds(model: str, folder: Path) -> dict[str, float]:
    """CPU seconds (user + system) of each role over one job on ``folder``."""
    with tempfile.TemporaryDirectory() as tmp:
        tiles, results = f"ipc://{tmp}/t", f"ipc://{tmp}/r"
        sink = subprocess.Popen([*ZV, "sink", "--out", f"{tmp}/r.jsonl", "--bind-results",
                                 results, "--bind-events", f"ipc://{tmp}/e", "--no-cache",
                                 "--announce"], stdout=subprocess.PIPE, cwd=ROOT)
        worker = subprocess.Popen([*ZV, "worker", "--model", model, "--tiles", tiles,
                                   "--results", results, "--announce"],
                                  stdout=subprocess.PIPE, cwd=ROOT)
        try:
            _announced(sink), _announced(worker)
            vent = subprocess.Popen([*ZV, "ventilate", str(folder), "--model", model,
                                     "--bind", tiles, "--sink-results", results,
                                     "--sink-events", f"ipc://{tmp}/e", "--no-cache"],
                                    stdout=subprocess.DEVNULL, cwd=ROOT)
            cpu = {"ventilator": _cpu_of(vent)}
        finally:
            for p in (worker, sink):
                p.send_signal(signal.SIGTERM)
        cpu["worker"] = _cpu_of(worker)
        cpu["sink"] = _cpu_of(sink)
    return cpu


DEFAULT_IMAGES = {"ssd-mobilenetv2-oid": 1200, "centerface": 300, "blazeface-short": 2000}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ssd-mobilenetv2-oid",
                    help="a model, several separated by commas, or 'all' (the three of "
                         "issue 18: ssd-mobilenetv2-oid 300², centerface 640², "
                         "blazeface-short 128²)")
    ap.add_argument("--images", type=int,
                    help="images per model (default: 1200 SSD, 300 CenterFace, 2000 BlazeFace)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--bench-seconds", type=int, default=10)
    ap.add_argument("--roles-only", action="store_true",
                    help="only the CPU per image of each role (quick, and robust to a busy "
                         "machine: CPU time, not wall time)")
    args = ap.parse_args(argv)
    models = (list(DEFAULT_IMAGES) if args.model == "all" else args.model.split(","))
    for model in models:
        measure(model, args.images or DEFAULT_IMAGES.get(model, 1200), args.repeats,
                [int(w) for w in args.workers.split(",")], args.bench_seconds,
                args.roles_only)
    return 0


def measure(model: str, images: int, repeats: int, workers: list[int], bench_seconds: int,
            roles_only: bool) -> None:
    """Print one model's tables: throughput rows side by side, then CPU per role."""
    from zmqvision.models import resolve

    size = resolve(model).input_size
    rows: dict[str, list[float]] = {"benchmark_app": [], "plain loop": []}
    for w in workers:
        rows[f"zmqvision run, {w} worker(s): wall"] = []
        rows[f"zmqvision run, {w} worker(s): JobDone"] = []
    ratios: dict[str, list[float]] = {k: [] for k in rows}
    cpu: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="zv-small-") as tmp:
        folder = Path(tmp)
        make_inputs(folder, images, size)
        if roles_only:
            cpu = [{**role_cpu(model, folder, images), "inference": inference_cpu_ms(model)}
                   for _ in range(repeats)]
            print(f"\n{images} JPEGs of {size[0]}x{size[1]}, {model}")
            _print_roles(cpu, repeats)
            return
        for r in range(repeats):
            got = {"benchmark_app": benchmark_app(model, bench_seconds),
                   "plain loop": plain_loop(model, folder)}
            for w in workers:
                wall, job = zv_run(model, folder, w, images)
                got[f"zmqvision run, {w} worker(s): wall"] = wall
                got[f"zmqvision run, {w} worker(s): JobDone"] = job
            cpu.append({**role_cpu(model, folder, images),
                        "inference": inference_cpu_ms(model)})
            for k, v in got.items():
                rows[k].append(v)
                ratios[k].append(v / got["benchmark_app"])
            print(f"{model} round {r + 1}/{repeats}: " + ", ".join(
                f"{k}={v:.0f}" for k, v in got.items()), file=sys.stderr)
    print(f"\n{images} JPEGs of {size[0]}x{size[1]}, {model}, {os.cpu_count()} "
          f"cores, medians of {repeats}\n")
    print("| what | images/s | min–max | ÷ benchmark_app | ÷ plain loop |")
    print("|---|---|---|---|---|")
    plain = statistics.median(rows["plain loop"])
    for k, v in rows.items():
        print(f"| {k} | {statistics.median(v):.0f} | {min(v):.0f}–{max(v):.0f} | "
              f"{statistics.median(ratios[k]):.2f} | {statistics.median(v) / plain:.2f} |")
    _print_roles(cpu, repeats)


def _print_roles(cpu: list[dict[str, float]], repeats: int) -> None:
    print(f"\n| role | CPU ms per image (median of {repeats}, start-up excluded) |\n|---|---|")
    for role in ("ventilator", "worker", "sink"):
        print(f"| {role} | {statistics.median(c[role] for c in cpu):.2f} |")
    if all("inference" in c for c in cpu):
        print(f"| (benchmark_app: one inference) | "
              f"{statistics.median(c['inference'] for c in cpu):.2f} |")
        print(f"| worker beyond inference | "
              f"{statistics.median(c['worker'] - c['inference'] for c in cpu):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
