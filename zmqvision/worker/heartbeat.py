"""The worker's heartbeat: when it is due and what it says.

Beats come from the work loop itself, with cumulative counters, so a stuck loop stops
beating (a side thread would stay green while work is stuck). They go to the sink (for
watchers) and to every ventilator, which declares the worker dead when they stop.
"""

from __future__ import annotations

import os
import socket
import time

from zmqvision import protocol


class Rate:
    """Tiles per second, exponentially smoothed over roughly the last few seconds."""

    def __init__(self) -> None:
        self.value = 0.0
        self._last_t = time.monotonic()
        self._last_n = 0

    def update(self, n: int) -> float:
        now = time.monotonic()
        dt = now - self._last_t
        if dt >= 0.5:
            inst = (n - self._last_n) / dt
            self.value = inst if self.value == 0 else 0.5 * self.value + 0.5 * inst
            self._last_t, self._last_n = now, n
        return self.value


class Heartbeats:
    """Builds a heartbeat every ``period`` seconds from the worker's counters."""

    def __init__(self, worker_id: str, device: str, model: str, period: float,
                 requests: int, stage2: str | None = None) -> None:
        self.worker_id = worker_id
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.device = device
        self.model = model
        # Its second stage's ref: with ``model``, what ventilators route to it (a worker
        # without one is sent no crop: docs/protocol.md, "Which worker gets a tile").
        self.stage2 = stage2
        self.period = period
        self.requests = requests
        self.started = time.monotonic()
        self.rate = Rate()
        self.next_at = 0.0  # the first is due at once

    def seconds_left(self, now: float) -> float:
        return self.next_at - now

    def message(self, done: int, failed: int, in_flight: int, queued: int,
                refused: int = 0) -> list:
        """The frames of a heartbeat now; the next is due a period later. ``refused``:
        messages from ventilators refused so far (beyond credit, or not decodable)."""
        now = time.monotonic()
        self.next_at = now + self.period
        return protocol.encode(protocol.Heartbeat(
            worker=self.worker_id, host=self.host, pid=self.pid, device=self.device,
            model=self.model, tiles_done=done, tiles_failed=failed,
            tiles_per_s=self.rate.update(done), in_flight=in_flight, queue=queued,
            uptime=now - self.started, period=self.period, requests=self.requests,
            stage2=self.stage2, refused=refused,
        ))
