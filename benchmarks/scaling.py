"""Scaling on one host: throughput of `zmqvision run` with W workers of T inference threads
each, against 1 worker of 1 thread, side by side in one run.

Each configuration runs ``zmqvision run DIR --workers W --threads T`` as a user would, over
the same generated images (large JPEGs made from scikit-image's bundled photos, as in
throughput.py), after one warm-up run that fills OpenVINO's compile cache. Runs rotate
through the configurations ``--repeats`` times, so load from elsewhere on a shared machine
hits all alike. The rate is tiles per second as ``zmqvision run`` prints it (from the sink's
JobStart to its JobDone; process start and model compile are outside it), and the ratio is
the median over repeats of each run's rate ÷ the 1×1 rate of the same repeat.

The machine's own ceiling is measured in the same rotation: W ``benchmark_app`` processes
at once, each with T threads in T streams, T + 1 requests and no pinning (what
``zmqvision run --workers W --threads T`` asks of OpenVINO), their FPS summed, ÷ one such
process alone. Inference alone scales no better than that; the last column is zmqvision's
ratio ÷ the ceiling's.
``--no-ceiling`` skips it.

    python benchmarks/scaling.py                                   # 1x1, 2x1, 1x2
    python benchmarks/scaling.py --configs 1x1,2x1,4x1,8x1,16x1    # a bigger machine
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from _common import run_zmqvision
from throughput import benchmark_app_cmd, make_inputs, parse_benchmark_app, parse_size


def parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
        if not m or min(int(m.group(1)), int(m.group(2))) < 1:
            raise argparse.ArgumentTypeError(f"expected WORKERSxTHREADS, got {item!r}")
        out.append((int(m.group(1)), int(m.group(2))))
    if (1, 1) not in out:
        out.insert(0, (1, 1))
    return out


def run_once(folder: Path, model: str, workers: int, threads: int,
             out: Path) -> tuple[int, float]:
    return run_zmqvision(folder, out, "--model", model, "--workers", str(workers),
                         "--threads", str(threads))


def ceiling_fps(model: str, workers: int, threads: int, seconds: int) -> float:
    """Summed FPS of ``workers`` benchmark_app processes run at once, ``threads`` each."""
    import subprocess

    from zmqvision.models import ensure, resolve

    spec = resolve(model)
    # benchmark_app takes thread settings only with -hint none. A worker of T threads runs
    # T streams of one thread (THROUGHPUT) with one request more than the streams.
    cmd = benchmark_app_cmd(ensure(spec), spec, seconds)
    cmd[cmd.index("throughput")] = "none"
    cmd += ["-nthreads", str(threads), "-nstreams", str(threads), "-nireq", str(threads + 1),
            "-pin", "NO"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tempfile.gettempdir()) for _ in range(workers)]
    total = 0.0
    for p in procs:
        text = p.communicate(timeout=seconds * 10 + 120)[0]
        total += parse_benchmark_app(p.returncode, text)["fps"]
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ssd-mobilenetv2-oid")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=parse_size, default=(1920, 1080))
    ap.add_argument("--configs", type=parse_configs, default=parse_configs("1x1,2x1,1x2"),
                    help="WORKERSxTHREADS list (default 1x1,2x1,1x2; 1x1 is always run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-ceiling", action="store_true",
                    help="skip the benchmark_app processes that measure the machine's ceiling")
    ap.add_argument("--bench-seconds", type=int, default=8,
                    help="benchmark_app -t for the ceiling (default 8)")
    args = ap.parse_args(argv)

    rates: dict[tuple[int, int], list[float]] = {c: [] for c in args.configs}
    ceiling: dict[tuple[int, int], list[float]] = {c: [] for c in args.configs}
    with tempfile.TemporaryDirectory(prefix="zv-scaling-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "in"
        folder.mkdir()
        make_inputs(folder, args.images, args.size)
        out = tmp / "out.jsonl"
        run_once(folder, args.model, 1, 1, out)  # warm-up: OpenVINO's compile cache
        tiles = 0
        for r in range(args.repeats):
            order = args.configs[r % len(args.configs):] + args.configs[:r % len(args.configs)]
            for w, t in order:
                tiles, rate = run_once(folder, args.model, w, t, out)
                rates[(w, t)].append(rate)
                print(f"repeat {r + 1}/{args.repeats}: {w}x{t} {rate:.1f} tiles/s",
                      file=sys.stderr, flush=True)
                if not args.no_ceiling:
                    fps = ceiling_fps(args.model, w, t, args.bench_seconds)
                    ceiling[(w, t)].append(fps)
                    print(f"repeat {r + 1}/{args.repeats}: benchmark_app {w}x{t} {fps:.1f} FPS",
                          file=sys.stderr, flush=True)

    base = rates[(1, 1)]
    print(f"command: {shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print(f"{args.images} images {args.size[0]}x{args.size[1]}, {args.model}, {tiles} tiles "
          f"per run, {args.repeats} rotating repeats, os.cpu_count()={os.cpu_count()}")
    print()
    with_ceiling = not args.no_ceiling
    head = ["workers × threads", "cores asked", "tiles/s (median)", "min–max",
            "÷ 1×1 (median of per-repeat ratios)", "per core asked"]
    if with_ceiling:
        head += ["benchmark_app, same processes and threads: FPS ÷ 1×1",
                 "zmqvision ratio ÷ benchmark_app ratio"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (w, t), v in rates.items():
        ratio = statistics.median(x / b for x, b in zip(v, base, strict=True))
        cells = [f"{w} × {t}", str(w * t), f"{statistics.median(v):.1f}",
                 f"{min(v):.1f}–{max(v):.1f}", f"{ratio:.2f}", f"{ratio / (w * t):.2f}"]
        if with_ceiling:
            c = ceiling[(w, t)]
            limit = statistics.median(x / b for x, b in zip(c, ceiling[(1, 1)], strict=True))
            cells += [f"{limit:.2f} ({statistics.median(c):.1f} FPS)", f"{ratio / limit:.2f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
