"""``zmqvision train``: where its time goes, and what data parallelism costs on the wire.

Rows:

- *embedding*: images/s of efficientnet-lite0 embeddings through a pool of ``--workers``
  processes (no store: every image computed), against ``benchmark_app`` on the same
  backbone file (THROUGHPUT hint, the machine's ceiling for the network alone).
- *epoch*: seconds per epoch of the head (``--hidden``, ``--batch``) over 1 and 2 worker
  processes, and in this process alone (the numpy reference, no wire).
- *communication*: bytes per step (parameters and indices out, gradients back) measured
  on the 2-worker run, and the share of a step they take. For 16 workers on 1 GbE the
  same bytes are scaled: each step sends the parameters to every worker and receives one
  gradient per shard, all through the master's one link (125 MB/s), so
  ``comm_s = (16 · out_per_worker + shards · grad_bytes) / 125e6``.

The pictures are generated: crops of scikit-image's brick, grass and gravel (``--per-class``
of each, ``--side`` px).

    python benchmarks/train.py                     # 3 x 100 crops, ~1 min on 2 cores
    python benchmarks/train.py --hidden 256 --per-class 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import markdown_table  # noqa: E402
from throughput import benchmark_app_cmd, run_benchmark_app  # noqa: E402

from tests.integration.test_train import write_textures  # noqa: E402
from zmqvision import Pool  # noqa: E402
from zmqvision.models import catalog, store  # noqa: E402
from zmqvision.train.data import Standardizer, class_weights, walk  # noqa: E402
from zmqvision.train.embed import BACKBONE, embed_paths  # noqa: E402
from zmqvision.train.master import PoolGradients  # noqa: E402
from zmqvision.train.trainer import Examples, HeadConfig, HeadTrainer, LocalGradients  # noqa: E402

GBE_BYTES_S = 125e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10, help="benchmark_app's run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        found = walk(str(write_textures(Path(tmp) / "tex", args.per_class, args.side)))
        with Pool(model=BACKBONE, workers=args.workers, cache=None) as pool:
            embed_paths(pool, found.paths[:8], None, "warm-up")  # compile, start
            t = time.perf_counter()
            got = embed_paths(pool, found.paths, None, "bench")
            embed_s = time.perf_counter() - t
    spec = catalog.resolve(BACKBONE)
    ceiling = run_benchmark_app(benchmark_app_cmd(store.ensure(spec), spec, args.seconds))
    rate = len(found.paths) / embed_s

    x = Standardizer.fit(got.vectors)(got.vectors)
    data, cw = Examples(x, found.y), class_weights(found.y, 3)
    config = HeadConfig(hidden=args.hidden, epochs=args.epochs, batch=args.batch,
                        shards=args.shards)
    rows, measured = [], {}
    t = time.perf_counter()
    HeadTrainer(data, 3, config, LocalGradients(data, cw, args.shards)).run()
    local_epoch = (time.perf_counter() - t) / args.epochs
    rows.append(["numpy, this process", "0", f"{local_epoch * 1000:.1f}", "", ""])
    for workers in (1, 2):
        with Pool(model=BACKBONE, workers=workers, cache=None) as pool:
            grads = PoolGradients(pool, data, cw, args.shards, min_workers=workers)
            try:
                grads.wait_for_workers()
                trainer = HeadTrainer(data, 3, config, grads)
                t = time.perf_counter()
                trainer.run()
                epoch_s = (time.perf_counter() - t) / args.epochs
            finally:
                grads.close()
        steps = trainer.steps_per_epoch * args.epochs
        out_step, in_step = grads.bytes_out / steps, grads.bytes_in / steps
        measured[workers] = (epoch_s, out_step, in_step, trainer.steps_per_epoch)
        rows.append([f"{workers} worker process(es)", str(workers), f"{epoch_s * 1000:.1f}",
                     f"{out_step / 1024:.1f}", f"{in_step / 1024:.1f}"])

    print(f"{len(found.paths)} crops of {args.side} px, {args.workers} workers; "
          f"layers {HeadTrainer(data, 3, config, None).layers}, batch {args.batch}, "
          f"{args.shards} shards\n")
    print(markdown_table(["embedding", "images/s", "benchmark_app FPS", "ratio"],
                         [["efficientnet-lite0, pool", f"{rate:.1f}",
                           f"{ceiling['fps']:.1f}", f"{rate / ceiling['fps']:.2f}"]]))
    print()
    print(markdown_table(["head training", "workers", "ms / epoch", "KiB out / step",
                          "KiB in / step"], rows))
    epoch_s, out_step, in_step, steps_per_epoch = measured[2]
    step_s = epoch_s / steps_per_epoch
    grad_bytes = in_step / min(args.shards, len(data)) if in_step else 0.0
    params_out = out_step / 2  # per worker: the parameters and its indices
    comm16 = (16 * params_out + args.shards * grad_bytes) / GBE_BYTES_S
    lan2 = (out_step + in_step) / GBE_BYTES_S
    print(f"\n2 workers: a step takes {step_s * 1000:.2f} ms; its {out_step + in_step:,.0f} "
          f"bytes would take {lan2 * 1000:.3f} ms on 1 GbE ({lan2 / step_s:.1%} of the step)."
          f"\n16 workers on 1 GbE: {16 * params_out + args.shards * grad_bytes:,.0f} bytes "
          f"a step through the master's link, {comm16 * 1000:.3f} ms per step.")


if __name__ == "__main__":
    main()
