"""The worker: ask ventilators for tiles, infer with OpenVINO's async queue, PUSH small
results to the sink.

Each ventilator is reached through a DEALER socket. The worker offers credit (``Ready``):
at first one tile per infer request, then one more per tile finished, so it only ever holds
what it can start (load follows speed). Heartbeats go every period, from the work loop, to
the sink (for watchers) and to every ventilator (which declares the worker dead, and sends
its tiles to others, when they stop). On SIGTERM the worker takes no new tiles, finishes the
ones it holds, sends their results (giving up after a few seconds if the sink is gone) and
says ``Bye``.

The parts, each with one job:

- ``config``: ``WorkerConfig``, what a worker is told.
- ``engine``: ``InferenceEngine``, the compiled model behind OpenVINO's ``AsyncInferQueue``;
  completions come back to the socket thread through a queue and a wake pipe.
- ``link``: ``TileLink``, the DEALERs to the ventilators: tiles in; credit (never lost),
  heartbeats and Bye out.
- ``results``: ``ResultSender``, the PUSH to the sink, and what a tile's result is.
- ``heartbeat``: ``Heartbeats``, when a beat is due and what it says.
- ``loop``: ``Worker``, which wires them, and ``run_worker``, its entry point.
"""

from zmqvision.worker.config import WorkerConfig
from zmqvision.worker.loop import Worker, run_worker

__all__ = ["Worker", "WorkerConfig", "run_worker"]
