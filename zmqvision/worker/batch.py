"""Real batches (``zmqvision worker --batch N``): tiles already received gathered into one
inference of up to N tiles, for devices where a batch dimension pays (GPUs, NPUs; on the
2-core CPU it does not: docs/performance.md).

The engine gathers tiles into a ``Gathering`` as the socket thread starts them. It goes
to the device once it holds N tiles, or once its first tile has waited ``wait_s`` (a few
ms: a lone tile is never held longer), whichever comes first, and only when an infer
request is free (while none is, it keeps filling). ``BatchClock`` wakes the socket
thread when that wait ends, so a partial batch leaves on time even when nothing else
happens. A finished batch is decoded tile by tile through ``BatchSlice``, a view of the
request that shows one tile's rows of every output, so each task's decoder reads it as
it reads a batch-1 request and each tile's result is what the unbatched worker sends.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from zmqvision import protocol, sockets


class TileBatch:
    """The tiles of one inference: ``(src, tile, t0)`` each, in the batch's order, and
    how many of their completions the socket thread has still to take (``left``): the
    batch holds an infer request until the last is taken, as a lone tile holds one."""

    def __init__(self) -> None:
        self.items: list[tuple[int, protocol.Tile, float]] = []
        self.left = 0
        # The batch's input tensor, and through it its pixels' block, kept alive until
        # the request is done: OpenVINO reads the block in place and a tensor passed to
        # start_async and then dropped by Python lets the block be freed while it runs
        # (measured: the first tile of a batch then decoded from reused memory).
        self.tensor = None

    def __len__(self) -> int:
        return len(self.items)

    def add(self, src: int, tile: protocol.Tile, t0: float) -> None:
        self.items.append((src, tile, t0))
        self.left += 1

    def pixels(self) -> list[np.ndarray]:
        return [tile.pixels for _, tile, _ in self.items]


class Gathering:
    """The batch being filled on the socket thread, and when it must go: full (``size``
    tiles) or ``wait_s`` after its first tile came."""

    def __init__(self, size: int, wait_s: float) -> None:
        self.size = size
        self.wait_s = wait_s
        self.batch = TileBatch()
        self.deadline = 0.0

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def full(self) -> bool:
        return len(self.batch) >= self.size

    def add(self, src: int, tile: protocol.Tile, t0: float) -> bool:
        """Add a tile; True when it is the first (the caller arms the clock)."""
        first = not self.batch.items
        if first:
            self.deadline = time.monotonic() + self.wait_s
        self.batch.add(src, tile, t0)
        return first

    def due(self, now: float) -> bool:
        return bool(self.batch.items) and (self.full or now >= self.deadline)

    def take(self) -> TileBatch:
        batch, self.batch = self.batch, TileBatch()
        return batch


class BatchClock:
    """A thread that wakes the socket thread's poller (``wake``) when a gathering's wait
    ends: the worker's poll may otherwise sleep up to its heartbeat period. One thread for
    the engine's life, not a timer per batch."""

    def __init__(self, wake: sockets.WakePipe) -> None:
        self._wake = wake
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="zmqvision-batch-clock",
                                        daemon=True)
        self._thread.start()

    def arm(self, deadline: float) -> None:
        """Wake the socket thread at ``deadline`` (time.monotonic), unless armed earlier."""
        with self._cond:
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._deadline = None
                self._wake.wake()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5.0)


class _Rows:
    """One tile's rows of an output tensor: ``data`` as an ``ov.Tensor``'s, ``[1, ...]``."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray) -> None:
        self.data = data


class BatchSlice:
    """Tile ``k`` of a finished batched request, read as a batch-1 request: every output's
    ``data`` is that tile's rows (a view, no copy), shaped ``[1, ...]`` as the decoders
    expect. Valid while the request's callback runs, as the request's own outputs are."""

    __slots__ = ("_request", "_k")

    def __init__(self, request, k: int) -> None:
        self._request = request
        self._k = k

    def get_output_tensor(self, index: int = 0) -> _Rows:
        return _Rows(self._request.get_output_tensor(index).data[self._k:self._k + 1])
