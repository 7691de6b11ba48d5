"""zmqvision.Pool from code: submit images from threads and asyncio tasks, stream a folder
with map, cancel and time out requests. Runs on this machine with one embedded worker.

    python examples/pool.py [examples/images]
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

import zmqvision


def main(folder: Path) -> None:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    t0 = time.monotonic()
    with zmqvision.Pool(model="centerface", workers=1) as pool:
        # One image, three ways: a path, the file's bytes (an upload), a decoded array.
        record = pool.submit(paths[0]).result()
        print(f"{record['image']}: {len(record['detections'])} faces, error {record['error']}")
        upload = pool.submit(paths[0].read_bytes(), name="upload.jpg").result()
        array = np.asarray(Image.open(paths[0]).convert("RGB"))
        from_array = pool.submit(array, name="frame-0").result()
        assert upload["detections"] == record["detections"] == from_array["detections"]

        # Many threads share one pool; each gets its own record back.
        with ThreadPoolExecutor(8) as ex:
            records = list(ex.map(lambda p: pool.submit(p).result(), paths * 4))
        print(f"{len(records)} records from 8 threads")

        # A folder, streamed: records in the order they complete, memory bounded.
        for rec in pool.map(paths, score_threshold=0.6):
            print(f"  map: {rec['image']}: {len(rec['detections'])} faces")

        # asyncio callers await records without blocking their event loop.
        async def detect_all() -> list[dict]:
            return await asyncio.gather(*(pool.detect(p) for p in paths))

        print(f"{len(asyncio.run(detect_all()))} records from asyncio")

        # Per-call settings, a deadline, and a request withdrawn by cancelling it.
        try:
            pool.submit(paths[-1], tile_size=(256, 256), timeout=0.001).result()
        except zmqvision.RequestTimeout as exc:
            print(f"timed out as asked: {exc}")
        future = pool.submit(paths[-1], tile_size=(256, 256))
        print(f"cancelled: {future.cancel()}")
    print(f"done in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "images")
