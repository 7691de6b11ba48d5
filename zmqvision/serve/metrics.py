"""Prometheus metrics of one server: its requests (by route and status, latency, in
flight, cache hits, coalesced) and its pool's state, read when scraped.

Each server has a registry of its own (not the process-wide default), so two servers in
one process (tests) do not collide and the scrape holds only what this server knows."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from zmqvision.pool import Pool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a cached answer takes milliseconds, a large image tens of seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class PoolCollector:
    """The pool's state at scrape time (nothing to update on the data path)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        pool, engine = self.pool, self.pool.engine
        yield GaugeMetricFamily("zmqvision_workers_alive",
                                "Workers the pool hears from (heartbeats within 3 periods).",
                                value=pool.workers_alive())
        yield GaugeMetricFamily("zmqvision_pool_pending",
                                "Requests submitted to the pool and not yet answered "
                                "(its queue depth).", value=pool.pending)
        yield GaugeMetricFamily("zmqvision_pool_stream_jobs",
                                "Stream jobs alive (one per distinct settings in use).",
                                value=pool.stream_jobs)
        yield GaugeMetricFamily("zmqvision_pool_images_in_flight",
                                "Images announced to the sink whose record has not come.",
                                value=len(engine.window))
        yield GaugeMetricFamily("zmqvision_pool_tiles_leased",
                                "Tiles sent to a worker and not yet answered.",
                                value=len(engine.dispatch.leases))
        yield CounterMetricFamily("zmqvision_pool_tiles_sent",
                                  "Tiles sent to workers (copies included).",
                                  value=engine.workers.tiles_sent)
        yield CounterMetricFamily("zmqvision_pool_tiles_requeued",
                                  "Tiles sent again after a lost worker or lease.",
                                  value=engine.dispatch.requeued)


class Metrics:
    def __init__(self, pool: Pool) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("zmqvision_http_requests", "HTTP requests answered.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("zmqvision_http_request_seconds",
                                 "Time from a request's arrival to its answer.",
                                 ["route"], buckets=BUCKETS, registry=r)
        self.in_flight = Gauge("zmqvision_http_in_flight", "HTTP requests being answered.",
                               registry=r)
        self.admitted = Gauge("zmqvision_serve_queue_depth",
                              "Images admitted and not yet answered (the admission limit "
                              "bounds it).", registry=r)
        self.cache_hits = Counter("zmqvision_serve_cache_hits",
                                  "Records answered from the result cache.", registry=r)
        self.coalesced = Counter("zmqvision_serve_coalesced",
                                 "Requests answered by another request's inference of the "
                                 "same image (same bytes and settings, in flight at once).",
                                 registry=r)
        self.rejected = Counter("zmqvision_serve_rejected",
                                "Requests refused for lack of room (429).", registry=r)
        r.register(PoolCollector(pool))

    def render(self) -> bytes:
        return generate_latest(self.registry)
