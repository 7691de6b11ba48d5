"""Time to first result: how long `zmqvision run` takes for one image, against what any
tool must pay for it (starting Python with OpenVINO, and the inference itself).

Measured, each ``--repeats`` times, rotating:

- *start*: wall time of a fresh Python process that imports OpenVINO and zmqvision's
  worker and compiles the model (from OpenVINO's cache, warm): what any tool pays before
  its first inference in a new process. *import only* is the same without the compile.
  *start, lean*: the same start with OpenVINO imported as zmqvision's own processes import
  it, without its model converter (``zmqvision/openvino_import.py``).
- *infer*: in this process, synchronous inference (LATENCY hint, every core) of the image's
  tiles, one after another, with the model already compiled: the inference time proper.
- *run, warm*: wall time of ``zmqvision run IMAGE`` with OpenVINO's compile cache warm
  (the model cache of ``zmqvision models pull`` and its compiled blobs, as after a first
  run on a machine).
- *run, cold*: the same with an empty compile cache (a fresh ``ZMQVISION_CACHE`` whose
  ``models/`` points at the real one, so nothing is downloaded; OpenVINO compiles anew).

The goal: warm ≤ start + 2 × infer. A one-image ``run`` runs its sink and worker as threads
(inproc endpoints), decodes the image while the worker loads the model, and imports
OpenVINO without its model converter; the ratio against the lean start shows how much of
the margin is that import alone.

    python benchmarks/first_result.py                      # centerface, astronaut.jpg
    python benchmarks/first_result.py --model ssd-mobilenetv2-oid
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return t


def infer_seconds(image: Path, model: str, repeats: int) -> tuple[float, int]:
    """Median wall time of synchronous inference over the image's tiles (warm model)."""
    from zmqvision.io import read_image
    from zmqvision.models import Detector, ensure, resolve
    from zmqvision.tiling import cut_tile, plan_tiles

    spec = resolve(model)
    det = Detector(spec, hint="LATENCY", model_path=ensure(spec))
    img = read_image(image).pixels
    plan = plan_tiles(img.shape[1], img.shape[0], spec.input_size, 0.2, False)
    cuts = [cut_tile(img, t, spec.input_size)[0] for t in plan]
    for c in cuts:  # warm-up
        det.infer(c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for c in cuts:
            det.infer(c)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(cuts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="centerface")
    ap.add_argument("--image", type=Path, default=ROOT / "examples" / "images" / "astronaut.jpg")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from zmqvision.models.store import cache_dir

    real_cache = cache_dir()
    py = sys.executable
    import_cmd = [py, "-c", "import openvino, zmq, zmqvision.worker"]
    start_cmd = [py, "-c", "from zmqvision.models import Detector, ensure, resolve; "
                 f"s = resolve({args.model!r}); Detector(s, model_path=ensure(s))"]
    lean_cmd = [py, "-c", "from zmqvision.openvino_import import skip_converter; "
                "skip_converter(); " + start_cmd[2]]
    rows: dict[str, list[float]] = {"import only": [], "start": [], "start, lean": [],
                                    "run, warm": [], "run, cold": []}
    with tempfile.TemporaryDirectory(prefix="zv-first-") as tmp:
        tmp = Path(tmp)
        out = tmp / "out.jsonl"
        run_cmd = [py, "-m", "zmqvision", "run", str(args.image), "--model", args.model,
                   "--out", str(out), "--no-progress", "--events", "tcp://127.0.0.1:0",
                   "--no-cache"]
        wall(run_cmd)  # the warm cache is warm
        for r in range(args.repeats):
            cold = tmp / f"cold{r}"
            cold.mkdir()
            (cold / "models").symlink_to(real_cache / "models")
            cold_env = dict(os.environ, ZMQVISION_CACHE=str(cold))
            steps = [("import only", import_cmd, None), ("start", start_cmd, None),
                     ("start, lean", lean_cmd, None), ("run, warm", run_cmd, None),
                     ("run, cold", run_cmd, cold_env)]
            for name, cmd, env in steps[r % 5:] + steps[:r % 5]:
                rows[name].append(wall(cmd, env))
    infer, n_tiles = infer_seconds(args.image, args.model, args.repeats)

    start = statistics.median(rows["start"])
    print(f"command: {shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print(f"{args.image.name}, {args.model}, {n_tiles} tile(s), {args.repeats} repeats, "
          f"os.cpu_count()={os.cpu_count()}")
    print()
    print("| what | seconds (median) | min–max |")
    print("|---|---|---|")
    imp = rows["import only"]
    print(f"| import only: python + import openvino, zmq, zmqvision.worker "
          f"| {statistics.median(imp):.3f} | {min(imp):.3f}–{max(imp):.3f} |")
    print(f"| start: the same + compile the model (cache warm) | {start:.3f} "
          f"| {min(rows['start']):.3f}–{max(rows['start']):.3f} |")
    lean = rows["start, lean"]
    print(f"| start, lean: the same without OpenVINO's converter import "
          f"| {statistics.median(lean):.3f} | {min(lean):.3f}–{max(lean):.3f} |")
    print(f"| infer: {n_tiles} tile(s), sync, warm model | {infer:.3f} | |")
    print(f"| goal: start + 2 × infer | {start + 2 * infer:.3f} | |")
    for name in ("run, warm", "run, cold"):
        v = rows[name]
        print(f"| zmqvision {name} | {statistics.median(v):.3f} | {min(v):.3f}–{max(v):.3f} |")
    warm = statistics.median(rows["run, warm"])
    print()
    print(f"warm run ÷ (start + 2 × infer) = {warm / (start + 2 * infer):.2f} (goal ≤ 1); "
          f"warm run − start − infer = {warm - start - infer:.3f} s of overhead")
    lean_start = statistics.median(lean)
    print(f"warm run ÷ (lean start + 2 × infer) = {warm / (lean_start + 2 * infer):.2f}; "
          f"warm run − lean start − infer = {warm - lean_start - infer:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
