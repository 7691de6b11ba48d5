"""What the reliability machinery costs: `zmqvision run` now (credit, leases, acks,
journal) against the last version without it (PUSH round-robin), side by side in one run.

The old version is checked out from this repository's history into a temporary git
worktree and run from there (``python -m zmqvision`` from that directory imports that
tree's package, and its child processes inherit the directory). Runs alternate, so noise
on this shared machine hits both alike; the ratio is the median of the per-pair ratios.
Beside throughput, the CPU time of each run (all its processes: ``run``, the sink and the
workers, from ``getrusage(RUSAGE_CHILDREN)``) per tile shows what the machinery costs in
work, which is less sensitive to other load than wall-clock time.

    python benchmarks/reliability_cost.py [--rev a0328f6] [--repeats 7] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import run_zmqvision

ROOT = Path(__file__).resolve().parent.parent
# The last commit before credit-based dispatch, leases, acks and the journal.
BASELINE_REV = "a0328f6"


def make_inputs(folder: Path, n: int, size: tuple[int, int]) -> None:
    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB")
              for name in ("astronaut", "chelsea", "coffee", "rocket")]
    for i in range(n):
        photos[i % 4].resize(size).rotate(i * 5).save(folder / f"in{i:03d}.jpg", quality=90)


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(cwd: Path, folder: Path, model: str, workers: int,
             out: Path) -> tuple[int, float, float]:
    """Tiles, tiles/s (from the summary line) and CPU seconds of the whole run."""
    cpu0 = _children_cpu_s()
    tiles, rate = run_zmqvision(folder, out, "--model", model, "--workers", str(workers),
                                cwd=cwd, timeout=600,
                                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return tiles, rate, _children_cpu_s() - cpu0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default=BASELINE_REV, help="baseline commit (%(default)s)")
    ap.add_argument("--model", default="ssd-mobilenetv2-oid")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    size = tuple(int(x) for x in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="zv-relcost-") as tmp:
        tmp = Path(tmp)
        old = tmp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.rev],
                       cwd=ROOT, check=True)
        try:
            folder = tmp / "in"
            folder.mkdir()
            make_inputs(folder, args.images, size)
            variants = {"without (PUSH round-robin, " + args.rev + ")": old,
                        "with (credit, leases, acks, journal)": ROOT}
            for cwd in variants.values():  # warm-up: OpenVINO's compile cache
                run_once(cwd, folder, args.model, args.workers, tmp / "warm.jsonl")
            rates: dict[str, list[float]] = {k: [] for k in variants}
            cpu_ms: dict[str, list[float]] = {k: [] for k in variants}
            tiles = 0
            for r in range(args.repeats):
                order = list(variants.items())
                if r % 2:
                    order.reverse()
                for name, cwd in order:
                    tiles, rate, cpu = run_once(cwd, folder, args.model, args.workers,
                                                tmp / "out.jsonl")
                    rates[name].append(rate)
                    cpu_ms[name].append(1000.0 * cpu / tiles)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           check=False)

    names = list(variants)
    ratios = [w / o for o, w in zip(rates[names[0]], rates[names[1]], strict=True)]
    print(f"command: {shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print(f"{args.images} images {size[0]}x{size[1]}, {args.model}, {tiles} tiles per run, "
          f"{args.workers} worker(s), {args.repeats} alternating pairs, "
          f"os.cpu_count()={os.cpu_count()}")
    print()
    print("| zmqvision run | tiles/s (median) | min–max | CPU ms per tile (median) | min–max |")
    print("|---|---|---|---|---|")
    for name in names:
        v, c = rates[name], cpu_ms[name]
        print(f"| {name} | {statistics.median(v):.1f} | {min(v):.1f}–{max(v):.1f} "
              f"| {statistics.median(c):.1f} | {min(c):.1f}–{max(c):.1f} |")
    print()
    print(f"with ÷ without, median of per-pair ratios: {statistics.median(ratios):.3f} "
          f"(pairs: {', '.join(f'{x:.2f}' for x in ratios)}; bar ≥ 0.95)")
    cpu_ratios = [w / o for o, w in zip(cpu_ms[names[0]], cpu_ms[names[1]], strict=True)]
    print(f"CPU per tile, with ÷ without, median of per-pair ratios: "
          f"{statistics.median(cpu_ratios):.3f} "
          f"(pairs: {', '.join(f'{x:.2f}' for x in cpu_ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
