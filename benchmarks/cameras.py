"""Cameras: sustained frames per second and lag with 1, 2 and 4 live 1920x1080 streams,
against the offline throughput of the same frames.

A clip of real photos (1920x1080, ``--rate`` frames/s, ``--seconds`` long) is made with
PyAV. Rows, one Pool (embedded sink and ``--workers`` workers) for all of them:

- ``offline``: the clip as a video file (``--fps`` sampling), read at the pool's pace:
  frames per second of ``JobDone.seconds``. The ceiling.
- ``N streams``: N copies of the clip read as cameras (``follow.LiveInputs``, paced at
  their frame rate, ``--fps`` sampling, drop-oldest with a queue of ``--queue``), all at
  once in one live job: frames recognised per second of wall time, frames dropped, and
  the lag (age of the oldest frame not yet written, as the job reports it every 0.5 s to
  the sink: ``zv.live``) at p50 and p99 of those samples.

    python benchmarks/cameras.py                       # 1, 2, 4 streams, 2 frames/s each
    python benchmarks/cameras.py --fps 5 --seconds 20 --streams 1,2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))


def make_clip(path: Path, seconds: float, rate: int, size=(1920, 1080)) -> int:
    import av
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [np.asarray(Image.fromarray(getattr(data, n)()).convert("RGB").resize(size))
              for n in ("astronaut", "chelsea", "coffee", "rocket")]
    frames = int(seconds * rate)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        for i in range(frames):
            photo = photos[(i * len(photos)) // frames]
            for packet in stream.encode(av.VideoFrame.from_ndarray(photo, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return frames


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="centerface")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=25, help="the clip's frames per second")
    ap.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--streams", default="1,2,4")
    args = ap.parse_args()

    import zmqvision
    from zmqvision.follow import LiveInputs
    from zmqvision.ventilator import VentilateConfig

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "camera.mp4"
        frames = make_clip(clip, args.seconds, args.rate)
        print(f"clip: {frames} frames of 1920x1080 at {args.rate}/s ({args.seconds:g} s), "
              f"sampled at {args.fps:g}/s; model {args.model}, {args.workers} worker(s)")
        with zmqvision.Pool(model=args.model, workers=args.workers, cache=None) as pool:
            pool.run_files(VentilateConfig(inputs=(str(clip),), model=args.model,
                                           cache=None, fps=args.fps))  # warm-up
            done = pool.run_files(VentilateConfig(inputs=(str(clip),), model=args.model,
                                                  cache=None, fps=args.fps))
            offline = done.images / done.seconds
            print(f"{'offline':>10}: {offline:6.2f} frames/s ({done.images} frames, "
                  f"{done.tiles} tiles in {done.seconds:.1f} s)")
            for n in (int(s) for s in args.streams.split(",")):
                lags: list[float] = []
                live = LiveInputs([], streams=[str(clip)] * n, when_behind="drop-oldest",
                                  limit=args.queue)
                live.configure(fps=args.fps, realtime=True)
                t0 = time.monotonic()
                done = pool.run_files(
                    VentilateConfig(model=args.model, cache=None, fps=args.fps), paths=live,
                    on_progress=lambda p, lags=lags: p.lag is not None and lags.append(p.lag))
                wall = time.monotonic() - t0
                offered = n * args.seconds * args.fps
                print(f"{n:>2} streams: {done.images / wall:6.2f} frames/s sustained "
                      f"({done.images} of ~{offered:.0f} offered, {live.dropped} dropped; "
                      f"{done.images / wall / offline:.2f} of offline), lag p50 "
                      f"{statistics.median(lags) if lags else 0:.2f} s, p99 "
                      f"{pct(lags, 0.99):.2f} s")


if __name__ == "__main__":
    main()
