"""The result cache: a first `zmqvision run` of a folder against the second (every image a
hit), with the default SQLite store and with Redis, and what a lookup costs per image.

Rows, each store in turn (a fresh, empty cache for each):

- *first run*: ``zmqvision run DIR --cache URL`` on a folder nobody has seen: every image
  decoded, tiled and inferred; the results are saved as images complete.
- *second run*: the same command again: every image a hit, no tile inferred.
  *job s* is the sink's JobStart → JobDone (the time the summary line prints); *wall s* the
  whole command (starting Python, the sink and a worker, compiling the model from
  OpenVINO's blob cache, stopping them), which a fully cached job still pays.
- *lookup per image*: in this process, ``ResultCache.lookup`` of entries that are there
  (median over the folder, µs), and hashing the file's bytes (BLAKE2b-256), which the
  ventilator does anyway for the image id.

The folder is generated: ``--images`` JPEGs (crops of the example photos, so each has
different bytes and one or a few tiles). Redis is a ``redis-server`` this script starts
on a free port and stops (its rows are left out, saying so, when it is not installed).

    python benchmarks/cache.py                    # 48 images, centerface, ~1 min on 2 cores
    python benchmarks/cache.py --images 200 --model ssd-mobilenetv2-oid
    python benchmarks/cache.py --size 1920x1080   # 8 tiles an image
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, markdown_table

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
SUMMARY = re.compile(r"(\d+) images, (\d+) failed, (\d+) cached, (\d+) tiles, \d+ detections "
                     r"in ([0-9.]+) s")


def make_folder(folder: Path, n: int, size: tuple[int, int] | None = None) -> Path:
    """``n`` JPEGs with different bytes: crops of the example photos, enlarged to
    ``size`` (several tiles each, the images this tool is for) when it is given."""
    from PIL import Image

    folder.mkdir(parents=True)
    photos = [Image.open(ROOT / "examples" / "images" / p).convert("RGB") for p in PHOTOS]
    for i in range(n):
        src = photos[i % len(photos)]
        k = 2 * (i // len(photos))
        img = src.crop((k, k, src.width - k, src.height - k))
        if size is not None:
            img = img.resize(size, Image.Resampling.BICUBIC)
        img.save(folder / f"{i:04d}.jpg", quality=92)
    return folder


def run(folder: Path, out: Path, cache: str, model: str) -> dict:
    cmd = [sys.executable, "-m", "zmqvision", "run", str(folder), "--out", str(out),
           "--no-progress", "--events", "tcp://127.0.0.1:0", "--model", model,
           "--cache", cache]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    m = SUMMARY.search(p.stdout)
    if m is None:
        raise RuntimeError(f"no summary line in: {p.stdout}")
    images, failed, cached, tiles, job_s = m.groups()
    return {"images": int(images), "cached": int(cached), "tiles": int(tiles),
            "job": float(job_s), "wall": wall}


def lookup_costs(folder: Path, cache_url: str, model: str) -> tuple[float, float]:
    """Median µs of one lookup (a hit) and of hashing one file, over the folder."""
    from zmqvision import io
    from zmqvision.cache import job_fingerprint, open_cache
    from zmqvision.models import resolve
    from zmqvision.ventilator import VentilateConfig, Ventilator

    spec = resolve(model)
    cache = open_cache(cache_url)
    # The settings of a default `run`, exactly as its ventilator sends them.
    vent = Ventilator(VentilateConfig(inputs=(str(folder),), model=model, cache=None))
    start = vent.job_start_message()
    vent.close()
    fp = job_fingerprint(start)
    hashes, hash_us, lookup_us = [], [], []
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        t0 = time.perf_counter()
        hashes.append(io.content_hash(data))
        hash_us.append((time.perf_counter() - t0) * 1e6)
    for h in hashes:
        t0 = time.perf_counter()
        hit = cache.lookup(fp, h, spec.ref)
        lookup_us.append((time.perf_counter() - t0) * 1e6)
        if hit is None:
            raise RuntimeError("a lookup missed: the settings here differ from the run's")
    cache.close()
    return statistics.median(lookup_us), statistics.median(hash_us)


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int] | None:
    if shutil.which("redis-server") is None:
        return None
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--model", default="centerface")
    ap.add_argument("--size", default=None,
                    help="enlarge the images to WxH, e.g. 1920x1080 (several tiles each) "
                         "[default: the photos' own sizes, one tile each]")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="zv-cache-bench-") as tmp:
        tmp = Path(tmp)
        folder = make_folder(tmp / "images", args.images, size)
        # Warm OpenVINO's blob cache so the first run does not also pay a compile.
        run(folder, tmp / "warm.jsonl", "off", args.model)
        stores = [("SQLite", f"sqlite://{tmp}/cache.sqlite3")]
        redis_proc = start_redis(tmp)
        if redis_proc is None:
            notes.append("Redis rows left out: redis-server is not installed here.")
        else:
            stores.append(("Redis", f"redis://127.0.0.1:{redis_proc[1]}/0"))
        try:
            for name, url in stores:
                first = run(folder, tmp / f"{name}-1.jsonl", url, args.model)
                second = run(folder, tmp / f"{name}-2.jsonl", url, args.model)
                if second["cached"] != second["images"] or second["tiles"]:
                    raise RuntimeError(f"{name}: second run was not all hits: {second}")
                lookup, hashing = lookup_costs(folder, url, args.model)
                for label, r in (("first run", first), ("second run", second)):
                    rows.append([name, label, str(r["images"]), str(r["cached"]),
                                 str(r["tiles"]), f"{r['job']:.2f}", f"{r['wall']:.2f}", ""])
                rows.append([name, "first ÷ second", "", "", "",
                             f"{first['job'] / max(second['job'], 0.005):.0f}×",
                             f"{first['wall'] / second['wall']:.1f}×",
                             f"lookup {lookup:.0f} µs/image, hash {hashing:.0f} µs/image"])
        finally:
            if redis_proc is not None:
                redis_proc[0].terminate()
                redis_proc[0].wait(10)
    print(markdown_table(["store", "run", "images", "cached", "tiles", "job s", "wall s",
                          "lookup cost (median)"], rows))
    for note in notes:
        print(f"\n{note}")
    print(f"\n{args.images} images ({args.size or 'photo sizes'}), model {args.model}; "
          "job s: the summary line's time "
          "(printed to 2 decimals: 0.00 counts as 0.005 in the ratio).")


if __name__ == "__main__":
    main()
