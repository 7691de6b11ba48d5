"""`zmqvision serve` under load from `wrk`, against the offline `zmqvision run` on the same
images, in one table.

Rows: wrk with 1, 8, 64 and 256 connections POSTing the images to /v1/detect in turn
(distinct bytes, more images than connections, so nothing is coalesced and the result
cache is off): requests/s, p50/p95/p99 latency, errors (non-2xx, timeouts); then the
same at 64 connections against a server whose result cache already holds every image
(cache hits). The offline rate is `zmqvision run` on the same folder, before and after the
served rows (their mean is the baseline); "served ÷ run" divides requests/s by the run's
images/s. RSS of the server and its children before and after.

    python benchmarks/serve.py                         # centerface, 512 images of 640x480
    python benchmarks/serve.py --model blazeface-short --seconds 10 --connections 1,64

Needs `wrk` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import markdown_table, run_zmqvision
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]

LUA = r"""
local bodies, n, i = {}, 0, 0
for line in io.lines("%(list)s") do
  local f = io.open(line, "rb"); n = n + 1; bodies[n] = f:read("*all"); f:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
request = function()
  i = i %% n + 1
  return wrk.format(nil, "/v1/detect", nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "us": %%d, "p50": %%d, "p95": %%d, ' ..
    '"p99": %%d, "errors": %%d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Distinct JPEGs: random crops of the example photos, resized."""
    photos = [Image.open(ROOT / "examples" / "images" / p).convert("RGB") for p in PHOTOS]
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        im = photos[i % len(photos)]
        w, h = int(im.width * rng.uniform(0.6, 1)), int(im.height * rng.uniform(0.6, 1))
        x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
        p = folder / f"img{i:04d}.jpg"
        im.crop((x, y, x + w, y + h)).resize(size).save(p, quality=90)
        paths.append(p)
    return paths


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the pool's sink and workers)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


class Serve:
    def __init__(self, model: str, workers: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmqvision", "serve", "--port", "0", "--announce",
             "--model", model, "--workers", str(workers), "--timeout", "120",
             "--max-queue", "1024", *extra],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("zmqvision serve exited before it was ready")
        self.url = json.loads(line)["ready"]["url"]
        deadline = time.monotonic() + 180
        while httpx.get(f"{self.url}/v2/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("no worker ready in 180 s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def wrk(url: str, lua: Path, connections: int, seconds: int) -> dict:
    # One thread: each wrk thread has its own Lua state, and two would send the same image
    # at once (coalesced: half the work). One thread drives 256 connections easily here.
    p = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                        "--timeout", "120s", "-s", str(lua), url],
                       capture_output=True, text=True, timeout=seconds + 180)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(p.stdout + p.stderr)
    r = json.loads(line[7:])
    r["rps"] = r["requests"] / (r["us"] / 1e6)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="centerface")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--connections", default="1,8,64,256")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found (Debian: apt-get install wrk)")
    size = tuple(int(v) for v in args.size.split("x"))
    levels = [int(c) for c in args.connections.split(",")]
    os.environ["ZMQVISION_RESULTS_CACHE"] = "off"
    tmp = Path(tempfile.mkdtemp(prefix="zv-serve-bench-"))
    try:
        (tmp / "images").mkdir()
        paths = make_images(tmp / "images", args.images, size)
        listing = tmp / "images.txt"
        listing.write_text("\n".join(str(p) for p in paths) + "\n")
        lua = tmp / "post.lua"
        lua.write_text(LUA % {"list": listing})
        opts = ("--model", args.model, "--workers", str(args.workers), "--no-cache")

        runs = iter(range(100))

        def offline() -> float:
            """Images/s of `zmqvision run` (its own summary: start-up excluded)."""
            tiles, tiles_s = run_zmqvision(tmp / "images", tmp / f"run{next(runs)}.jsonl",
                                           *opts)
            return tiles_s / (tiles / len(paths))

        rows = []
        run_before = offline()
        srv = Serve(args.model, args.workers, "--no-cache")
        try:
            rss0 = rss_mb(srv.proc.pid)
            wrk(srv.url, lua, min(levels), 3)  # warm-up: every part has seen requests
            served = {c: wrk(srv.url, lua, c, args.seconds) for c in levels}
            rss1 = rss_mb(srv.proc.pid)
        finally:
            srv.stop()
        cache = tmp / "cache.db"
        srv = Serve(args.model, args.workers, "--cache", f"sqlite:///{cache}")
        try:
            wrk(srv.url, lua, 8, max(5, int(args.images / max(run_before, 1)) + 5))
            hits = wrk(srv.url, lua, 64, args.seconds)
        finally:
            srv.stop()
        run_after = offline()
        baseline = (run_before + run_after) / 2
        for c, r in [*served.items(), ("64, cache hits", hits)]:
            rows.append([str(c), f"{r['rps']:.1f}", f"{r['p50'] / 1e3:.0f}",
                         f"{r['p95'] / 1e3:.0f}", f"{r['p99'] / 1e3:.0f}", str(r["errors"]),
                         f"{r['rps'] / baseline:.2f}"])
        print(f"model {args.model}, {args.images} images of {args.size}, "
              f"{args.workers} worker(s), wrk {args.seconds} s per row")
        print(f"offline `zmqvision run`: {run_before:.1f} images/s before, "
              f"{run_after:.1f} after")
        print(markdown_table(["connections", "requests/s", "p50 ms", "p95 ms", "p99 ms",
                              "errors", "served ÷ run"], rows))
        print(f"RSS of serve + pool children: {rss0:.0f} MiB before, {rss1:.0f} MiB after "
              f"{sum(r['requests'] for r in served.values())} requests")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
