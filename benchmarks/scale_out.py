"""How many remote workers one ventilator can feed: its tiles/s ceiling per wire mode.

Issue 24. The workers are replaced by a sink-speed echo (``echo`` below: DEALERs that speak
the worker protocol, READY with credit and heartbeats, and answer every tile, or every
tile of a whole image, with an empty result at once, reading only the header), and a real
``zmqvision sink`` writes the records, so only the ventilator's work is measured: read,
hash, decode (threaded, ``ReadAhead``), cut, encode, send. The ventilator runs in a child
process pinned to 1, 2, ... cores (``os.sched_setaffinity``, which also sizes its encoder
threads); the echo and the sink run unpinned beside it. On a 2-core machine they share
the cores with it, so ``CPU ms/tile`` (the ventilator process's own CPU time, all its
threads, over the tiles) is the figure the projection uses; ``tiles/s`` is the wall rate.

Inputs: ``--images`` real 4000x3000 photos (rows of scikit-image's bundled photos, as
``examples/make_mosaic.py`` and benchmarks/throughput.py make them), JPEG quality 90,
CenterFace's plan (640 px tiles, overlap 0.2: 48 tiles per image, no JPEG draft).

    python benchmarks/scale_out.py                      # raw, jpeg, image x 1 and all cores
    python benchmarks/scale_out.py --modes jpeg --encode-threads 1   # jpeg before threading

The projection (printed after the table, written out in docs/performance.md): hosts one
ventilator keeps busy = min(ventilator tiles/s, link tiles/s) / host tiles/s, with link
tiles/s = 0.94 x line rate / bytes per tile and a CenterFace host's tiles/s given by
``--host-tps`` (measured: 23.7 tiles/s for 2 cores, docs/performance.md; 16 cores
assumed 8x that).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

MODEL = "centerface"
SIZE = (4000, 3000)


def make_photos(folder: Path, n: int) -> list[Path]:
    import numpy as np
    from make_mosaic import tile_canvas
    from PIL import Image
    from skimage import data as skdata

    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.fromarray(getattr(skdata, name)()).convert("RGB")
               for name in ("astronaut", "coffee", "chelsea", "rocket")]
    out = []
    for i in range(n):
        path = folder / f"photo{i}.jpg"
        if not path.exists():
            canvas = tile_canvas(*SIZE, np.random.default_rng(i), sources, (300, 700), 1.0)
            canvas.save(path, "JPEG", quality=90)
        out.append(path)
    return out


# ---------------------------------------------------------------------------- the echo


def echo(tiles: str, results: str, workers: int, credit: int) -> None:
    """``workers`` fake workers in one process: credit, heartbeats, an empty result per
    tile at once. Runs until killed."""
    import msgpack
    import zmq

    from zmqvision import protocol
    from zmqvision.boxes import Detections
    from zmqvision.models import resolve

    # Heartbeats name the job's model: tiles go only to workers that serve theirs.
    model_ref = resolve(MODEL).ref
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(results)
    dealers, names = [], []
    poller = zmq.Poller()
    for i in range(workers):
        d = ctx.socket(zmq.DEALER)
        name = f"echo-{os.getpid()}-{i}"
        d.setsockopt(zmq.ROUTING_ID, name.encode())
        d.setsockopt(zmq.RCVHWM, 100)
        d.connect(tiles)
        d.send_multipart(protocol.encode(protocol.Ready(name, credit)))
        poller.register(d, zmq.POLLIN)
        dealers.append(d)
        names.append(name)
    empty = Detections.empty()
    next_beat = 0.0
    while True:
        now = time.monotonic()
        if now >= next_beat:
            next_beat = now + 0.5
            for d, name in zip(dealers, names, strict=True):
                d.send_multipart(protocol.encode(protocol.Heartbeat(
                    worker=name, host="echo", pid=os.getpid(), device="echo", model=model_ref,
                    tiles_done=0, tiles_failed=0, tiles_per_s=0.0, in_flight=0, queue=0,
                    uptime=1.0, period=1.0, requests=credit)))
        for sock, _ in poller.poll(100):
            i = dealers.index(sock)
            frames = sock.recv_multipart(copy=False)
            h = msgpack.unpackb(frames[1].buffer, raw=False)
            model = h["model"]
            if frames[0].bytes == protocol.MsgType.TILE.tag:
                indices = [h["index"]]
            else:
                indices = range(len(h["boxes"]))
            for index in indices:
                push.send_multipart(protocol.encode(protocol.Result(
                    job=h["job"], image=h["image"], index=index, worker=names[i],
                    model=model, detections=empty, attempt=h["attempt"])))
            sock.send_multipart(protocol.encode(protocol.Ready(names[i], len(indices))))


# ---------------------------------------------------------------------------- one measure


def measure(folder: str, mode: str, cores: int, tiles: str, results: str,
            events: str) -> dict:
    """In a child pinned to ``cores`` cores: one ventilate job, its wall and CPU time."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    from zmqvision.ventilator import VentilateConfig, Ventilator

    config = VentilateConfig(inputs=(folder,), model=MODEL, tiles=tiles, sink=results,
                             events=events, wire=mode, cache=None, decode_threads=cores,
                             read_ahead=2 * cores)
    vent = Ventilator(config)
    try:
        deadline = time.monotonic() + 60
        while not vent.dispatch.workers and time.monotonic() < deadline:
            vent._pool.engine.step(50)  # the echo connects: time starts with workers there
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        done = vent.run()
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        vent.close()
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"mode": mode, "cores": cores, "tiles": done.tiles, "images": done.images,
            "failed": done.failed, "wall": wall, "cpu": cpu,
            "threads": int(os.environ.get("ZMQVISION_ENCODE_THREADS") or cores)}


def run_one(folder: Path, mode: str, cores: int, workers: int, tmp: Path,
            encode_threads: int | None) -> dict:
    eps = {k: f"ipc://{tmp}/{k}-{mode}-{cores}" for k in ("tiles", "results", "events")}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ZMQVISION_RESULTS_CACHE": "off"}
    if encode_threads:
        env["ZMQVISION_ENCODE_THREADS"] = str(encode_threads)
    out = tmp / f"{mode}-{cores}.jsonl"
    sink = subprocess.Popen([sys.executable, "-m", "zmqvision", "sink", "--out", str(out),
                             "--bind-results", eps["results"], "--bind-events",
                             eps["events"]], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    echo_p = subprocess.Popen([sys.executable, __file__, "--echo", eps["tiles"],
                               eps["results"], str(workers)], env=env)
    try:
        p = subprocess.run([sys.executable, __file__, "--measure", str(folder), mode,
                            str(cores), eps["tiles"], eps["results"], eps["events"]],
                           env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise SystemExit(p.stdout + p.stderr)
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        for q in (echo_p, sink):
            q.terminate()
            try:
                q.wait(10)
            except subprocess.TimeoutExpired:
                q.kill()
                q.wait()


def bytes_per_tile(paths: list[Path]) -> dict[str, float]:
    """What one tile costs the link in each mode (payload frame; headers are ~200 B)."""
    import numpy as np
    from PIL import Image

    from zmqvision import protocol
    from zmqvision.plan import JobPlan, JobSettings

    plan = JobPlan(JobSettings(model=MODEL))
    jpeg, n_tiles, file_bytes = [], 0, 0
    for p in paths:
        pixels = np.asarray(Image.open(p).convert("RGB"))
        tiles = plan.tiles(pixels.shape[1], pixels.shape[0])
        n_tiles += len(tiles)
        file_bytes += p.stat().st_size
        for t in tiles[::6]:
            cut, _ = plan.cut(pixels, t, 1)
            jpeg.append(len(protocol.encode_jpeg(cut)))
    w, h = plan.spec.input_size
    return {"raw": w * h * 3, "jpeg": sum(jpeg) / len(jpeg), "image": file_bytes / n_tiles}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--modes", default="raw,jpeg,image")
    ap.add_argument("--cores", default="1,2,all")
    ap.add_argument("--workers", type=int, default=8, help="echo workers")
    ap.add_argument("--credit", type=int, default=8)
    ap.add_argument("--encode-threads", type=int, default=None,
                    help="ZMQVISION_ENCODE_THREADS for the ventilator (1: the old, serial path)")
    ap.add_argument("--host-tps", default="2:23.7,16:189.6",
                    help="cores:tiles/s of a CenterFace host")
    ap.add_argument("--photos", default=os.path.join(tempfile.gettempdir(), "zv-scale-out"))
    args = ap.parse_args(argv)
    ncpu = len(os.sched_getaffinity(0))
    cores = sorted({ncpu if c == "all" else min(int(c), ncpu) for c in args.cores.split(",")})
    paths = make_photos(Path(args.photos), args.images)
    sizes = bytes_per_tile(paths)
    tmp = Path(tempfile.mkdtemp(prefix="zv-so-"))
    rows = []
    try:
        for mode in args.modes.split(","):
            for c in cores:
                r = run_one(Path(args.photos), mode, c, args.workers, tmp, args.encode_threads)
                r["tps"] = r["tiles"] / r["wall"]
                r["cpu_ms"] = 1000 * r["cpu"] / r["tiles"]
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    hosts = [(int(a), float(b)) for a, b in (x.split(":") for x in args.host_tps.split(","))]
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: os.sched_getaffinity={ncpu} cores; {args.images} photos "
          f"{SIZE[0]}x{SIZE[1]}, {MODEL} plan, {args.workers} echo workers")
    print()
    print("| wire | ventilator cores | tiles/s (wall) | ventilator CPU ms/tile | "
          "bytes/tile | tiles/s per ventilator core (1000/CPU ms) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['cores']} | {r['tps']:.0f} | {r['cpu_ms']:.2f} | "
              f"{sizes[r['mode']] / 1024:.0f} KiB | {1000 / r['cpu_ms']:.0f} |")
    print()
    print("Projected CenterFace hosts one ventilator keeps busy "
          "(min(ventilator, link) / host tiles/s):")
    print()
    print("| wire | ventilator cores | link | link tiles/s | "
          + " | ".join(f"{c}-core hosts" for c, _ in hosts) + " |")
    print("|---|---|---|---|" + "---|" * len(hosts))
    for r in rows:
        for link, bps in (("1 GbE", 1e9), ("10 GbE", 1e10)):
            link_tps = 0.94 * bps / 8 / sizes[r["mode"]]
            vent_tps = r["cores"] * 1000 / r["cpu_ms"]
            feed = min(link_tps, vent_tps)
            print(f"| {r['mode']} | {r['cores']} | {link} | {link_tps:.0f} | "
                  + " | ".join(f"{feed / tps:.0f}" for _, tps in hosts) + " |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--echo":
        echo(sys.argv[2], sys.argv[3], int(sys.argv[4]), 8)
    elif len(sys.argv) > 1 and sys.argv[1] == "--measure":
        a = sys.argv[2:]
        print(json.dumps(measure(a[0], a[1], int(a[2]), a[3], a[4], a[5])))
    else:
        sys.exit(main())
