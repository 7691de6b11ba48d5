"""What a worker is told: its endpoints, its model and device, its heartbeat period."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from zmqvision import sockets


@dataclass(frozen=True)
class WorkerConfig:
    tiles: str = sockets.connect_endpoint(sockets.TILES_PORT)  # comma-separated for several
    results: str = sockets.connect_endpoint(sockets.RESULTS_PORT)
    model: str = "centerface"
    task: str | None = None  # "detect"/"classify": how a user's model file is read
    input_size: tuple[int, int] | None = None
    device: str = "CPU"
    threads: int | None = None
    hint: str = "THROUGHPUT"
    requests: int | None = None  # in-flight infer requests; None = engine.default_requests
    score_threshold: float | None = None
    heartbeat_s: float = 1.0
    worker_id: str | None = None
    curve: str | None = None  # key directory: CURVE on every socket (security.py)
    # A second-stage model this worker also runs (tasks.stage2: "mobilefacenet"), for the
    # stage-2 tiles of two-stage jobs; None: such tiles are answered model_mismatch.
    stage2: str | None = None
    # Tiles one infer request runs at once (--batch): 1 is a tile per request. N > 1
    # needs a model whose batch dimension can change (models.runtime.reshape_batch); a
    # batch goes when full or when its first tile has waited batch_wait_ms (worker.batch).
    # Off by default: on the 2-core CPU a batch of 4 ran slower than 4 single tiles
    # (docs/performance.md, "Real batches"); GPUs and NPUs gain from it.
    batch: int = 1
    batch_wait_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be 0..1000, got {self.batch_wait_ms}")

    def tile_endpoints(self) -> list[str]:
        """One ventilator per endpoint of ``tiles``."""
        return [e.strip() for e in self.tiles.split(",") if e.strip()]


def new_worker_id() -> str:
    """host-pid-random: unique among the workers of a pool (ventilators route by it)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
