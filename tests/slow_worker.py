"""A slow device for tests: the real worker, each tile's completion held back.

    python -m tests.slow_worker --hold-ms 150 worker [zmqvision worker options]

runs ``zmqvision worker`` with the given options (the same CLI, flags and exit codes), on
an engine that keeps every request busy ``--hold-ms`` longer than the device took, as a
slower device would: the tile's result, its credit and its request slot all wait. The
production worker has no such hook; this module swaps in the engine from outside.
"""

from __future__ import annotations

import sys
import threading

from zmqvision import sockets
from zmqvision.worker import Worker, WorkerConfig
from zmqvision.worker.engine import Completion, InferenceEngine


class SlowEngine(InferenceEngine):
    """An ``InferenceEngine`` whose completions reach the worker ``hold_s`` late."""

    def __init__(self, config: WorkerConfig, stop: sockets.StopFlag, hold_s: float) -> None:
        super().__init__(config, stop)
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._timers: set[threading.Timer] = set()
        self._closed = False

    def _deliver(self, c: Completion) -> None:  # on an OpenVINO thread
        with self._lock:
            if self._closed:
                return
            timer = threading.Timer(self.hold_s, self._release, (c,))
            timer.daemon = True
            self._timers.add(timer)
            timer.start()

    def _release(self, c: Completion) -> None:
        with self._lock:
            if self._closed:
                return
            self._timers.discard(threading.current_thread())
            super()._deliver(c)

    def close(self) -> None:
        with self._lock:  # no completion is delivered once the wake pipe may be gone
            self._closed = True
            for t in self._timers:
                t.cancel()
        super().close()


def run_slow_worker(hold_s: float):
    """``run_worker`` with a SlowEngine: what the CLI's worker command calls here."""

    def run(config: WorkerConfig, stop: sockets.StopFlag | None = None, on_ready=None,
            ctx=None) -> int:
        stop = stop or sockets.StopFlag()
        worker = Worker(config, stop, ctx, engine=SlowEngine(config, stop, hold_s))
        try:
            return worker.run(on_ready)
        finally:
            worker.close()

    return run


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] != "--hold-ms" or argv[2] != "worker":
        sys.exit("usage: python -m tests.slow_worker --hold-ms MS worker [options]")
    hold_s = float(argv[1]) / 1000.0
    import zmqvision.worker
    from zmqvision import cli

    # The CLI's worker command imports run_worker from zmqvision.worker when it runs.
    zmqvision.worker.run_worker = run_slow_worker(hold_s)
    sys.argv = ["zmqvision", *argv[2:]]
    cli.main()


def hold(ms: float) -> dict:
    """Keyword arguments for ``Processes.start`` / ``Network.start`` that make the worker
    they start a slow one: ``procs.start("worker", ..., **hold(150))``."""
    return {"module": "tests.slow_worker", "prefix": ("--hold-ms", str(ms))}


if __name__ == "__main__":
    main(sys.argv[1:])
