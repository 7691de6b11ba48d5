"""Whole images (``--wire image``): a worker decodes an ``ImageWork``'s file bytes and cuts
its tiles itself, exactly as the ventilator would have (the same decode, the same bounds,
the same cut), so each tile is then inferred and answered as if it had come as a ``Tile``.

An image that cannot be decoded here (over its pixel bound, a decompression bomb, a
truncated or damaged file, another size than its plan) is answered with that error for
every one of its tiles: the sink writes the image's error record, and the worker lives on.

The decode and cut run on a thread of their own (``ImageDecoder``): a 12 MP JPEG takes
~0.1-0.8 s to decode, and the worker's loop must go on starting tiles, sending results and
credit, and heartbeating meanwhile (three silent periods and the ventilator takes it for
dead and sends its images to others).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait

from zmqvision import io, protocol, sockets, tiling
from zmqvision.worker.results import named_error

log = logging.getLogger("zmqvision.worker")


class ImageCutter:
    """Turns an ``ImageWork`` into its tiles (``protocol.Tile``, raw pixels), or into one
    error result per tile. ``task`` and ``input_size`` are the worker's model's."""

    def __init__(self, task, input_size: tuple[int, int], model: str, worker: str) -> None:
        self.task = task
        self.input_size = input_size
        self.model = model
        self.worker = worker

    def tiles(self, work: protocol.ImageWork) -> tuple[list[protocol.Tile], list[protocol.Result]]:
        """``(tiles to infer, error results)``: one of the two lists is empty."""
        if work.model != self.model:
            return [], self._errors(work, "model_mismatch",
                                    f"image cut for {work.model}, this worker runs {self.model}")
        try:
            image = io.decode_image(bytes(protocol._buffer(work.data)),
                                    max_pixels=work.max_pixels, name=work.image,
                                    reduce=(lambda w, h: work.draft) if work.draft > 1 else None)
            if (image.width, image.height) != (work.width, work.height):
                raise io.ImageError("changed_during_job", f"{work.image}: decoded as "
                                    f"{image.width}x{image.height}, planned for "
                                    f"{work.width}x{work.height}")
            tiles = []
            for index, (box, full) in enumerate(zip(work.boxes, work.full, strict=True)):
                cut, scale = self.task.cut(image.pixels, tiling.Tile(index, box, full),
                                           self.input_size, image.reduced)
                tiles.append(protocol.Tile(
                    job=work.job, image=work.image, index=index, box=box, scale=scale,
                    model=work.model, pixels=cut, attempt=work.attempt,
                    min_score=work.min_score, task=work.task))
            return tiles, []
        except io.ImageError as exc:
            return [], self._errors(work, exc.type, exc.message)
        except Exception as exc:  # noqa: BLE001 - hostile bytes must never end the worker
            return [], self._errors(work, "unreadable", f"{work.image}: {exc}")

    def _errors(self, work: protocol.ImageWork, kind: str, message: str) -> list[protocol.Result]:
        log.warning("image %s of job %s: %s", work.image, work.job, message)
        return [named_error(work.job, work.image, index, work.attempt, self.worker,
                            self.model, kind, message) for index in range(len(work.boxes))]


class ImageDecoder:
    """Runs an ``ImageCutter`` on one thread of its own, off the worker's loop: ``submit``
    an ``ImageWork``, and once ``wake.r`` (watched by the loop's poller) is readable,
    ``ready()`` gives each image's ``(src, tiles, errors)`` in the order submitted. One
    thread: decoding images side by side would only take cores from inference."""

    def __init__(self, cutter: ImageCutter, stop: sockets.StopFlag | None = None) -> None:
        self.cutter = cutter
        self.wake = sockets.WakePipe(stop)
        self._pool = ThreadPoolExecutor(1, "zv-image-decode")
        self._pending: deque[tuple[int, int, Future]] = deque()  # (src, tiles, decode)
        self.tiles_pending = 0  # tiles of images not decoded yet: held, for the heartbeat

    def submit(self, src: int, work: protocol.ImageWork) -> None:
        future = self._pool.submit(self.cutter.tiles, work)
        future.add_done_callback(lambda _f: self.wake.wake())
        self._pending.append((src, len(work.boxes), future))
        self.tiles_pending += len(work.boxes)

    @property
    def pending(self) -> int:
        """Images submitted whose tiles have not been taken with ``ready`` yet."""
        return len(self._pending)

    def ready(self) -> list[tuple[int, list[protocol.Tile], list[protocol.Result]]]:
        """The images decoded (or failed) so far, in the order they came."""
        self.wake.drain()
        out = []
        while self._pending and self._pending[0][2].done():
            src, count, future = self._pending.popleft()
            self.tiles_pending -= count
            out.append((src, *future.result()))  # tiles() answers every failure itself
        return out

    def wait(self, timeout: float) -> None:
        """Until the oldest image submitted is decoded, at most ``timeout`` s."""
        if self._pending:
            wait([self._pending[0][2]], timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.wake.close()
