"""The gallery's lookup cost: exact cosine search (``faces.gallery.best_rows``: one
float32 matrix product and an argmax per query) at 10k and 1M enrolled embeddings.

Enrolled vectors are random unit 192-d vectors (MobileFaceNet's size); queries are
enrolled vectors with noise, so that the right answer is known and checked. Each row
times a batch of queries (the faces of one image or a few) after one warm-up, median
of ``--repeats``; memory is the matrix itself. Also: building the matrix from the
store (SQLite) at 10k, as ``Gallery.refresh`` does.

    python benchmarks/gallery.py                  # ~1 min on 2 cores, 0.8 GB at 1M
    python benchmarks/gallery.py --sizes 10000,100000 --batches 1,32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import markdown_table  # noqa: E402

from zmqvision.faces.gallery import Gallery, best_rows  # noqa: E402

DIM = 192


def unit(rng, n: int) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):  # in blocks: no float64 copy of a million rows
        v = rng.standard_normal((min(100_000, n - s), DIM), dtype=np.float32)
        out[s:s + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def time_search(matrix: np.ndarray, batch: int, repeats: int, rng) -> tuple[float, bool]:
    truth = rng.integers(0, len(matrix), batch)
    queries = matrix[truth] + 0.05 * unit(rng, batch)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    idx, _ = best_rows(matrix, queries)  # warm-up, and the check
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        best_rows(matrix, queries)
        times.append(time.perf_counter() - t)
    return statistics.median(times), bool((idx == truth).all())


def time_refresh(n: int, rng) -> tuple[float, float]:
    """Enrol ``n`` people (one embedding each) in a SQLite gallery; time the writes and
    one ``refresh`` (read, decode, stack)."""
    with tempfile.TemporaryDirectory() as tmp:
        g = Gallery.open(f"sqlite://{os.path.join(tmp, 'g.sqlite3')}")
        try:
            m = unit(rng, n)
            t = time.perf_counter()
            for i in range(n):
                g.enroll(f"person{i:07d}", m[i])
            write = time.perf_counter() - t
            t = time.perf_counter()
            g.refresh()
            return write, time.perf_counter() - t
        finally:
            g.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--refresh", type=int, default=10_000,
                    help="people enrolled in SQLite for the refresh row (0: skip)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        matrix = unit(rng, n)
        for b in (int(x) for x in args.batches.split(",")):
            s, ok = time_search(matrix, b, args.repeats, rng)
            rows.append([f"{n:,}", str(b), f"{s * 1e3:.2f}", f"{s * 1e3 / b:.3f}",
                         f"{matrix.nbytes / 1e6:.0f}", "yes" if ok else "NO"])
        del matrix
    print(markdown_table(["enrolled", "queries", "batch ms", "ms per query", "matrix MB",
                          "all right"], rows))
    if args.refresh:
        write, refresh = time_refresh(args.refresh, rng)
        print(f"\nSQLite, {args.refresh:,} people: enrol {write / args.refresh * 1e3:.2f} ms "
              f"each (one transaction each), refresh (read + stack) {refresh * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
