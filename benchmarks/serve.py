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

``--soak N``: instead of the table, N requests from ``--clients`` concurrent clients (httpx)
to a server with a result cache, over the distinct images: most repeat an image the cache
holds (hits), a share ``--misses`` sends bytes never seen (a miss: inferred, then cached),
printing the RSS of every process (serve, its sink, its workers) before, every N/10
requests and after — whether a long-running server grows.

    python benchmarks/serve.py --soak 100000 --model blazeface-short --images 64

``--soak N --tracemalloc``: the server (a Pool and a Server) runs in this process under
tracemalloc; the snapshots at N/5 and N requests are compared and the lines whose
allocations grew most are printed (the sink and workers are separate processes either
way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
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


def process_tree(pid: int) -> dict[int, str]:
    """The process and its descendants: pid → a short name (from its command line)."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        role = next((w for w in words if w in ("serve", "sink", "worker")), words[0])
        out[p] = role
    return out


def rss_each(pid: int) -> dict[str, float]:
    """MiB resident of each process of the tree, by role (role#pid for a repeated role)."""
    tree = process_tree(pid)
    roles = list(tree.values())
    out = {}
    for p, role in sorted(tree.items()):
        try:
            pages = int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except OSError:
            continue
        name = role if roles.count(role) == 1 else f"{role}#{p}"
        out[name] = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return out


class Soak:
    """``total`` requests from ``clients`` concurrent clients: a share ``misses`` of them
    bytes never sent before (one of the images with a unique suffix after its JPEG end),
    the rest one of the images as they are (cache hits once seen); RSS of every process of
    the server at every tenth of the way."""

    def __init__(self, url: str, pid: int, bodies: list[bytes], total: int, clients: int,
                 misses: float, on_tenth=None) -> None:
        self.url, self.pid, self.bodies = url, pid, bodies
        self.total, self.clients, self.misses = total, clients, misses
        self.on_tenth = on_tenth  # called with the requests done at every tenth
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.rows: list[tuple[int, float, dict[str, float]]] = []

    def _next(self) -> bytes | None:
        if self.sent >= self.total:
            return None
        n = self.sent
        self.sent += 1
        body = self.bodies[n % len(self.bodies)]
        # Every 1/misses-th request a miss, spread evenly.
        if self.misses > 0 and int(n * self.misses) != int((n + 1) * self.misses):
            return body + n.to_bytes(8, "big")
        return body

    async def _client(self, client: aiohttp.ClientSession) -> None:
        while (body := self._next()) is not None:
            try:
                async with client.post(f"{self.url}/v1/detect", data=body) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = 0
            self.statuses[status] = self.statuses.get(status, 0) + 1
            done = sum(self.statuses.values())
            if done % max(1, self.total // 10) == 0:
                self.rows.append((done, time.monotonic(), rss_each(self.pid)))
                if self.on_tenth is not None:
                    self.on_tenth(done)

    async def run(self) -> None:
        self.rows.append((0, time.monotonic(), rss_each(self.pid)))
        # aiohttp's client: httpx's costs the shared CPUs some 4 times as much a request
        # (221 req/s of cache hits against ~1,000 with wrk)
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=120),
                connector=aiohttp.TCPConnector(limit=self.clients),
                headers={"Content-Type": "image/jpeg"}) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.clients)))


def traced_soak(args, tmp: Path, paths: list[Path]) -> None:
    """The soak with the server in this process under tracemalloc: which lines' allocations
    grew between the first tenth of the requests and the end."""
    import gc
    import tracemalloc

    from zmqvision import Pool
    from zmqvision.serve import ServeConfig, Server

    tracemalloc.start(8)
    snaps = {}

    def on_tenth(done: int) -> None:
        if done in (args.soak // 5, args.soak):
            # Collected first: a finished request is a reference cycle (its future's done
            # callback names it) that lingers until the cyclic collector runs.
            gc.collect()
            snaps[done] = tracemalloc.take_snapshot()

    bodies = [p.read_bytes() for p in paths]
    with Pool(model=args.model, workers=args.workers, cache=f"sqlite:///{tmp / 'soak.db'}") as pool:
        deadline = time.monotonic() + 180
        while not pool.workers_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("no worker ready in 180 s")
            time.sleep(0.2)
        with Server(pool, ServeConfig(port=0, max_queue=1024, timeout=120)) as srv:
            run = Soak(srv.url, os.getpid(), bodies, args.soak, args.clients, args.misses,
                       on_tenth)
            asyncio.run(run.run())
    first, last = snaps[args.soak // 5], snaps[args.soak]
    keep = [tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    diff = last.filter_traces(keep).compare_to(first.filter_traces(keep), "lineno")
    print(f"tracemalloc: {args.soak // 5} → {args.soak} requests "
          f"(statuses {dict(sorted(run.statuses.items()))}); traced "
          f"{sum(s.size for s in first.statistics('filename')) / 2**20:.1f} → "
          f"{sum(s.size for s in last.statistics('filename')) / 2**20:.1f} MiB; "
          "lines that grew most:")
    for stat in diff[:15]:
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
              f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}")


def soak(args, tmp: Path, paths: list[Path]) -> None:
    bodies = [p.read_bytes() for p in paths]
    srv = Serve(args.model, args.workers, "--cache", f"sqlite:///{tmp / 'soak.db'}")
    try:
        run = Soak(srv.url, srv.proc.pid, bodies, args.soak, args.clients, args.misses)
        started = time.monotonic()
        asyncio.run(run.run())
        took = time.monotonic() - started
        # Idle a moment: what is still resident once nothing is in flight.
        time.sleep(5)
        run.rows.append((args.soak, time.monotonic(), rss_each(srv.proc.pid)))
        metrics = httpx.get(f"{srv.url}/metrics").text
    finally:
        srv.stop()
    names = sorted({k for _, _, r in run.rows for k in r})
    print(f"soak: {args.soak} requests, {args.clients} clients, model {args.model}, "
          f"{len(bodies)} distinct images of {args.size}, misses {args.misses:g}, "
          f"{args.workers} worker(s): {took:.0f} s, {args.soak / took:.0f} req/s, "
          f"statuses {dict(sorted(run.statuses.items()))}")
    body = [[str(done) if i < len(run.rows) - 1 else f"{done} (+5 s idle)",
             *(f"{r.get(n, float('nan')):.0f}" for n in names),
             f"{sum(r.values()):.0f}"] for i, (done, _, r) in enumerate(run.rows)]
    print(markdown_table(["requests", *(f"{n} MiB" for n in names), "total MiB"], body))
    for line in metrics.splitlines():
        if line.startswith(("zmqvision_serve_cache_hits_total", "zmqvision_pool_stream_jobs",
                            "zmqvision_serve_coalesced_total")):
            print(line)


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
    ap.add_argument("--soak", type=int, default=0, metavar="N",
                    help="Run N requests against a caching server instead, printing RSS")
    ap.add_argument("--clients", type=int, default=8, help="--soak: concurrent clients")
    ap.add_argument("--misses", type=float, default=0.05,
                    help="--soak: share of requests with bytes never seen (cache misses)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="--soak: the server in this process, its allocations compared")
    args = ap.parse_args()
    if args.soak:
        size = tuple(int(v) for v in args.size.split("x"))
        tmp = Path(tempfile.mkdtemp(prefix="zv-serve-soak-"))
        try:
            (tmp / "images").mkdir()
            paths = make_images(tmp / "images", args.images, size)
            (traced_soak if args.tracemalloc else soak)(args, tmp, paths)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
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
