"""This tree against an earlier commit, side by side: the same `zmqvision run` commands,
alternating between the two trees, on the same machine at the same time, so a noisy
machine slows both alike. For "no regression" checks of a change.

Rows (wall time of the whole command; median of ``--repeats``, and this ÷ that):

- one image (``examples/images/astronaut.jpg``): time to first result, one process;
- a folder of the example photos plus a 4000×3000 mosaic (many tiles, child processes);
- ``--small N`` single-tile JPEGs at the model's input size (per-image costs).

Records are compared too (everything but the random job id): they must be equal.

    python benchmarks/side_by_side.py e45be22                 # centerface, 7 rounds
    python benchmarks/side_by_side.py HEAD~3 --model ssd-mobilenetv2-oid --small 600
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def command(tree: Path, inputs: Path, model: str, out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), ZMQVISION_RESULTS_CACHE="off")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "zmqvision", "run", str(inputs), "--model", model,
                        "--out", str(out), "--no-progress"], env=env, cwd=tree,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{tree}: run failed\n{p.stdout}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def records(path: Path) -> dict:
    with open(path) as fh:
        return {r["image"]: {k: v for k, v in r.items() if k != "job"}
                for r in map(json.loads, fh)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the commit to compare against (e.g. e45be22, HEAD~1)")
    ap.add_argument("--model", default="centerface")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--small", type=int, default=300, help="single-tile images (0: none)")
    args = ap.parse_args(argv)
    from zmqvision.models import resolve

    with tempfile.TemporaryDirectory(prefix="zv-sbs-") as tmp:
        tmp = Path(tmp)
        old = tmp / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old),
                        args.rev], check=True, capture_output=True)
        try:
            folder = tmp / "photos"
            folder.mkdir()
            for p in (ROOT / "examples" / "images").glob("*.jpg"):
                shutil.copy(p, folder / p.name)
            subprocess.run([sys.executable, str(ROOT / "examples" / "make_mosaic.py"), "--out",
                            str(folder / "mosaic.jpg"), "--seed", "0"], check=True,
                           capture_output=True)
            rows = {"one image": ROOT / "examples" / "images" / "astronaut.jpg",
                    "photos + mosaic": folder}
            if args.small:
                sys.path.insert(0, str(ROOT / "benchmarks"))
                from small_images import make_inputs

                small = tmp / "small"
                small.mkdir()
                make_inputs(small, args.small, resolve(args.model).input_size)
                rows[f"{args.small} small images"] = small
            times: dict[tuple[str, str], list[float]] = {}
            same = True
            for r in range(args.repeats):
                for row, inputs in rows.items():
                    for name, tree in (("old", old), ("new", ROOT)):
                        out = tmp / f"{name}.jsonl"
                        times.setdefault((row, name), []).append(
                            command(tree, inputs, args.model, out))
                    same &= records(tmp / "old.jsonl") == records(tmp / "new.jsonl")
                print(f"round {r + 1}/{args.repeats} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           capture_output=True)
    print(f"\nthis tree ÷ {args.rev}, {args.model}, medians of {args.repeats} alternating "
          f"rounds, {os.cpu_count()} cores\n")
    print("| command | old s | new s | new ÷ old |\n|---|---|---|---|")
    for row in rows:
        o, n = (statistics.median(times[(row, k)]) for k in ("old", "new"))
        print(f"| {row} | {o:.2f} | {n:.2f} | {n / o:.3f} |")
    print(f"\nrecords equal (but the job id): {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
