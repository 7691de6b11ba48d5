"""The embedded default: ``zmqvision run`` as a user of the Pool.

A Pool with a local cluster (``zmqvision.embedded``: a sink and workers as child processes
on private ipc endpoints) runs one file job and is closed. The events socket takes the
documented TCP port when it is free so that ``zmqvision watch`` finds a run with no flags.

Two start-ups are chosen from the job itself, before anything starts:

- A job of one image runs in one process: there, starting two more Python processes costs
  more than the whole job (measured: a warm single-tile run took 1.1 s, of which inference
  0.04 s). The same sink and worker loops run as threads on ``inproc://`` endpoints, and a
  single-tile job uses OpenVINO's LATENCY hint (one request on every core, about twice as
  fast for one tile as THROUGHPUT's streams).
- A job whose first image is in the result cache starts its workers (and their model) only
  at the first image that needs tiles, and its sink as a thread: a run whose images are
  all cached starts no process at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from zmqvision import protocol, sockets
from zmqvision.embedded import (
    LocalCluster,
    default_threads,
    sink_args,
    usable_cores,
    worker_args,
)
from zmqvision.sink import SinkConfig
from zmqvision.ventilator import JobFailed, VentilateConfig
from zmqvision.worker import WorkerConfig

__all__ = ["JobFailed", "RunPlan", "default_threads", "run_job", "single_image",
           "sink_args", "usable_cores", "worker_args"]

log = logging.getLogger("zmqvision.run")


@dataclass(frozen=True)
class RunPlan:
    """What ``run`` starts: the ventilator's job, the sink's outputs, the worker template."""

    job: VentilateConfig
    sink: SinkConfig
    worker: WorkerConfig
    workers: int = 1
    log_level: int = logging.WARNING
    in_process: bool | None = None  # threads instead of child processes; None: one image


def single_image(job: VentilateConfig) -> str | None:
    """The job's only input image, or None when it has several (or none)."""
    found = []
    for path in job.input_paths():
        found.append(path)
        if len(found) > 1:
            return None
    return found[0] if found else None


def _single_tile(job: VentilateConfig, path: str) -> bool:
    """Whether the image is one tile under the job's tiling (read from its header; the
    job's task plans it: a classifier's whole image is one tile)."""
    from zmqvision.io import peek_size
    from zmqvision.plan import JobPlan, JobSettings

    size = peek_size(path)
    return size is not None and len(JobPlan(JobSettings.of(job)).tiles(*size)) == 1


def _thread_worker(plan: RunPlan, image: str | None) -> WorkerConfig:
    """The worker of a one-process run: LATENCY when the job is one tile (THROUGHPUT's
    streams would give that tile half the cores)."""
    wcfg = replace(plan.worker, threads=plan.worker.threads or default_threads(1),
                   worker_id=plan.worker.worker_id or f"local-{os.getpid()}-0")
    if (image is not None and plan.worker.hint == "THROUGHPUT"
            and _single_tile(plan.job, image)):
        wcfg = replace(wcfg, hint="LATENCY")
    return wcfg


def _first_input_cached(job: VentilateConfig) -> bool:
    """Looked up before anything starts, with the cache's own lookup (no pool yet)."""
    from zmqvision.cache import open_cache
    from zmqvision.inputs import first_input_cached
    from zmqvision.plan import JobPlan, JobSettings

    cache = open_cache(job.cache)
    if cache is None:
        return False
    try:
        return first_input_cached(job.input_paths(),
                                  JobPlan(JobSettings.of(job)).lookup_in(cache))
    finally:
        cache.close()


def run_job(
    plan: RunPlan,
    stop: sockets.StopFlag | None = None,
    on_progress: Callable[[protocol.Progress], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> protocol.JobDone:
    """Run one whole job on this machine; raises JobFailed if it cannot complete."""
    from zmqvision.models import ensure, resolve
    from zmqvision.pool import Pool

    stop = stop or sockets.StopFlag()
    spec = resolve(plan.job.model, task=plan.job.task)
    ensure(spec, log=lambda m: on_wait(m) if on_wait else log.warning("%s", m))
    in_process, image = plan.in_process, None
    if in_process is None and plan.workers == 1:
        image = single_image(plan.job)
        in_process = image is not None
    if in_process and plan.workers != 1:
        raise ValueError("in-process runs have one worker")
    worker = _thread_worker(plan, image) if in_process else plan.worker
    cached = _first_input_cached(plan.job)
    if cached:
        log.info("the first image is in the result cache: the sink runs as a thread, "
                 "workers start at the first image that needs tiles")
    elif in_process:
        log.info("one process: the sink and the worker (%s hint) run as threads, on inproc "
                 "endpoints", worker.hint)
    cluster = LocalCluster(plan.sink, worker, workers=plan.workers, log_level=plan.log_level,
                           in_process=bool(in_process), lazy_workers=cached)
    job = plan.job
    pool = Pool.for_run(cluster, cache=job.cache, wire=job.wire, lease_s=job.lease_s,
                        curve=job.curve, stop=stop)
    try:
        return pool.run_files(job, stop, on_progress, on_wait)
    finally:
        pool.close()
