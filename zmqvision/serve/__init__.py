"""``zmqvision serve``: an HTTP inference API over a ``zmqvision.Pool``.

The parts, in the order a request meets them:

- ``server``: the aiohttp server (its own event loop, in the main thread of ``zmqvision
  serve`` or a thread of a test), started and stopped as one object.
- ``app``: the routes. ``/v1/detect`` (the image as the body or a multipart file, the
  CLI's options as query parameters, the JSONL record as the answer), ``/v1/detect/batch``,
  the Open Inference Protocol (KServe v2) REST routes (``kserve`` encodes and decodes its
  JSON and binary tensors), ``/metrics``.
- ``options``: query parameters (or KServe ``parameters``) → the Pool's job settings,
  validated, with a bound on how many distinct settings one server accepts.
- ``detector``: admission (a bounded number of images in flight, past it 429), coalescing
  (the same bytes with the same settings while in flight: one request to the pool),
  deadlines (past it the pool's future is cancelled, which withdraws the request).
- ``metrics``: Prometheus counters and histograms of the requests, and the pool's own
  state (workers alive, requests pending, images in flight) read at scrape time.

Readiness is the pool's: ready while at least one worker with the server's model is heard
(``Pool.workers_alive(model)``, from the workers' heartbeats).
"""

from zmqvision.serve.config import ServeConfig
from zmqvision.serve.server import Server, serve_forever

__all__ = ["ServeConfig", "Server", "serve_forever"]
