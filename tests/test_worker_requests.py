"""How many infer requests a worker runs when not told (engine.default_requests).

With the device's optimum + 1, a classifier's worker starved: a request freed by a
finished tile waited a credit round trip (as long as a tile on a stream on 2 busy
cores) for its next tile, and efficientnet-lite0 kept 1.3 of 3 requests busy
(docs/performance.md, "Classification: why the worker starved"). A tile now waits
queued behind the running one on each stream.
"""

from __future__ import annotations

from zmqvision import sockets
from zmqvision.worker import WorkerConfig
from zmqvision.worker.engine import InferenceEngine, default_requests


def test_default_requests_queue_a_tile_behind_each_stream():
    assert default_requests(1) == 3
    assert default_requests(2) == 5
    assert default_requests(4) == 9
    # A batch already holds `batch` tiles per request: the old optimum + 1.
    assert default_requests(2, batch=4) == 3


def test_a_worker_not_told_runs_twice_the_optimum_plus_one():
    stop = sockets.StopFlag()
    engine = InferenceEngine(WorkerConfig(model="efficientnet-lite0"), stop)
    try:
        optimal = engine.detector.optimal_requests()
        assert engine.infer_requests == 2 * optimal + 1
        assert engine.requests == engine.infer_requests  # its credit, one tile each
    finally:
        engine.close()


def test_requests_given_are_kept():
    stop = sockets.StopFlag()
    engine = InferenceEngine(WorkerConfig(model="efficientnet-lite0", threads=1, requests=2),
                             stop)
    try:
        assert engine.infer_requests == 2
    finally:
        engine.close()
