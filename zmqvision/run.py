"""The embedded default: a sink and workers as child processes, the ventilator in this one.

The same roles, messages and sockets as a many-host deployment, on local TCP endpoints
with ports the OS picks (so two runs never collide), except the events socket, which
takes the documented port when it is free so that ``zmqvision watch`` finds a run with no
flags. Children are started with ``spawn`` (a fresh interpreter: no inherited ZeroMQ
context or OpenVINO threads) and are always stopped, also on errors and Ctrl-C.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from zmqvision import protocol, sockets
from zmqvision.sink import SinkConfig, run_sink
from zmqvision.ventilator import JobFailed, VentilateConfig, Ventilator
from zmqvision.worker import WorkerConfig, run_worker

log = logging.getLogger("zmqvision.run")

LOCAL_ANY_PORT = "tcp://127.0.0.1:0"


@dataclass(frozen=True)
class RunPlan:
    """What ``run`` starts: the ventilator's job, the sink's outputs, the worker template."""

    job: VentilateConfig
    sink: SinkConfig
    worker: WorkerConfig
    workers: int = 1
    log_level: int = logging.WARNING


def _configure_child_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _sink_main(config: SinkConfig, conn, level: int) -> None:
    _configure_child_logging(level)
    stop = sockets.StopFlag()
    stop.install_signal_handlers()
    try:
        run_sink(config, stop, on_ready=conn.send)
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _worker_main(config: WorkerConfig, conn, level: int) -> None:
    _configure_child_logging(level)
    stop = sockets.StopFlag()
    stop.install_signal_handlers()
    try:
        run_worker(config, stop, on_ready=lambda wid: conn.send({"worker": wid}))
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def default_threads(workers: int) -> int | None:
    """One worker lets OpenVINO's THROUGHPUT hint use every core; several share them."""
    if workers <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def _stop(procs: list[mp.Process], grace: float = 10.0) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: the role finishes its loop and closes its sockets
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(2)


def run_job(
    plan: RunPlan,
    stop: sockets.StopFlag | None = None,
    on_progress: Callable[[protocol.Progress], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> protocol.JobDone:
    """Run one whole job on this machine; raises JobFailed if it cannot complete."""
    from zmqvision.models import ensure, resolve

    stop = stop or sockets.StopFlag()
    spec = resolve(plan.job.model)
    ensure(spec, log=lambda m: on_wait(m) if on_wait else log.warning("%s", m))
    ctx = mp.get_context("spawn")
    procs: list[mp.Process] = []
    conns = []
    vent = None
    try:
        parent, child = ctx.Pipe()
        sink_cfg = replace(plan.sink, results=LOCAL_ANY_PORT)
        sink_p = ctx.Process(target=_sink_main, args=(sink_cfg, child, plan.log_level),
                             name="zmqvision-sink", daemon=True)
        sink_p.start()
        procs.append(sink_p)
        if not parent.poll(60):
            raise JobFailed("the sink did not start within 60 s")
        ready = parent.recv()
        if "error" in ready:
            raise JobFailed(f"the sink could not start: {ready['error']}")
        job_cfg = replace(plan.job, tiles=LOCAL_ANY_PORT, sink=ready["results"],
                          events=sockets.connectable(ready["events"]))
        vent = Ventilator(job_cfg)
        tiles_ep = vent.bind()
        threads = plan.worker.threads or default_threads(plan.workers)
        for i in range(plan.workers):
            wcfg = replace(plan.worker, tiles=tiles_ep, results=ready["results"],
                           threads=threads, worker_id=f"local-{i}")
            wparent, wchild = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(wcfg, wchild, plan.log_level),
                            name=f"zmqvision-worker-{i}", daemon=True)
            p.start()
            procs.append(p)
            conns.append(wparent)
        errors: list[str] = []

        def watchdog() -> None:
            for c in conns:
                while c.poll():
                    msg = c.recv()
                    if "error" in msg:
                        errors.append(msg["error"])
            workers_alive = [p for p in procs[1:] if p.is_alive()]
            if not workers_alive:
                detail = "; ".join(errors) or "see the log above"
                raise JobFailed(f"every worker stopped: {detail}")
            if not sink_p.is_alive():
                raise JobFailed("the sink stopped")

        return vent.run(stop, on_progress, on_wait, watchdog=watchdog)
    finally:
        if vent is not None:
            vent.close()
        _stop(procs)
