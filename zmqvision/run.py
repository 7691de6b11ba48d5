"""The embedded default: a sink and workers as child processes, the ventilator in this one.

The children are the very commands a user would start by hand on many hosts
(`python -m zmqvision sink …`, `… worker …`), on ipc endpoints in a private temporary
directory (so two runs never collide, and every endpoint is known before anything binds:
the sink and the workers start at once, which saves the sink's start-up from the time to
first result), or, where ipc does not exist, local TCP with ports the OS picks, the sink
first. The events socket takes the documented TCP port when it is free so that
``zmqvision watch`` finds a run with no flags. Each child
announces itself on stdout with one JSON line once it is ready (the sink: its bound
endpoints; a worker: its id, after compiling its model), so the job's clock does not count
start-up. Real commands rather than ``multiprocessing``: nothing is pickled, and a
user's script that calls ``zmqvision.detect`` needs no ``if __name__ == "__main__"`` guard.
Children stop when told (SIGTERM), and also by themselves when this process is gone.

A job of one image is run differently: there, starting two more Python processes costs
more than the whole job (measured: a warm single-tile run took 1.1 s, of which inference
0.04 s). The same sink and worker loops then run as threads of this process, on
``inproc://`` endpoints of one shared ZeroMQ context, and a single-tile job uses OpenVINO's
LATENCY hint (one request on every core, about twice as fast for one tile as THROUGHPUT's
streams). Nothing else changes: the same messages, acks and records.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import zmq

from zmqvision import protocol, sockets
from zmqvision.sink import SinkConfig
from zmqvision.ventilator import JobFailed, VentilateConfig, Ventilator
from zmqvision.worker import WorkerConfig

log = logging.getLogger("zmqvision.run")

LOCAL_ANY_PORT = "tcp://127.0.0.1:0"
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunPlan:
    """What ``run`` starts: the ventilator's job, the sink's outputs, the worker template."""

    job: VentilateConfig
    sink: SinkConfig
    worker: WorkerConfig
    workers: int = 1
    log_level: int = logging.WARNING
    in_process: bool | None = None  # threads instead of child processes; None: one image


def usable_cores() -> int:
    """Cores this process may run on (taskset, cgroup cpusets), not all the machine has:
    OpenVINO sizes its own thread pool by the same affinity."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int | None:
    """One worker lets OpenVINO's THROUGHPUT hint use every core; several share them."""
    if workers <= 1:
        return None
    return max(1, usable_cores() // workers)


def sink_args(cfg: SinkConfig) -> list[str]:
    args = ["sink", "--out", cfg.out, "--format", cfg.format, "--bind-results", cfg.results,
            "--bind-events", cfg.events]
    if cfg.events_fallback:
        args += ["--bind-events-fallback", cfg.events_fallback]
    if cfg.draw:
        args += ["--draw", cfg.draw]
    if not cfg.append:
        args.append("--overwrite")
    if cfg.cache is None:
        args.append("--no-cache")
    elif cfg.cache != "auto":
        args += ["--cache", cfg.cache]
    return args


def worker_args(cfg: WorkerConfig) -> list[str]:
    args = ["worker", "--model", cfg.model, "--device", cfg.device, "--hint", cfg.hint,
            "--tiles", cfg.tiles, "--results", cfg.results, "--heartbeat", str(cfg.heartbeat_s)]
    if cfg.input_size:
        args += ["--input-size", f"{cfg.input_size[0]}x{cfg.input_size[1]}"]
    if cfg.threads:
        args += ["--threads", str(cfg.threads)]
    if cfg.requests:
        args += ["--requests", str(cfg.requests)]
    if cfg.score_threshold is not None:
        args += ["--score-threshold", str(cfg.score_threshold)]
    if cfg.worker_id:
        args += ["--id", cfg.worker_id]
    return args


class Child:
    """One `python -m zmqvision …` child that announces itself with a JSON line."""

    def __init__(self, args: list[str], log_level: int) -> None:
        self.name = args[0]
        cmd = [sys.executable, "-m", "zmqvision", *args, "--announce",
               "--parent-pid", str(os.getpid()), "--log-level", str(log_level)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.ready: dict | None = None

    def poll_ready(self, timeout: float) -> dict | None:
        """The ready announcement if it came within ``timeout``; raises if the child died."""
        if self.ready is not None:
            return self.ready
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if readable:
            line = self.proc.stdout.readline()
            if line:
                self.ready = json.loads(line)["ready"]
                return self.ready
        if self.proc.poll() is not None:
            raise JobFailed(f"the {self.name} exited with code {self.proc.returncode} "
                            "before it was ready (its messages are above)")
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the role finishes its loop, closes its sockets

    def reap(self, deadline: float) -> None:
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _stop(children: list[Child], grace: float = 10.0) -> None:
    """SIGTERM all, wait for them together, then SIGKILL what is left."""
    for c in children:
        c.terminate()
    deadline = time.monotonic() + grace
    for c in children:
        c.reap(deadline)


def _wait_ready(children: list[Child], stop: sockets.StopFlag, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(children)
    while pending:
        if stop.is_set():
            raise JobFailed("interrupted")
        if time.monotonic() > deadline:
            raise JobFailed(f"{len(pending)} {pending[0].name}(s) not ready after {timeout:.0f} s")
        pending = [c for c in pending if c.poll_ready(0.05) is None]


class _Role(threading.Thread):
    """A sink or worker loop as a thread of this process, with its own stop flag."""

    def __init__(self, name: str, target: Callable[..., int], config, ctx: zmq.Context):
        super().__init__(name=f"zmqvision-{name}", daemon=True)
        self.role = name
        self.stop_flag = sockets.StopFlag()
        self.ready = threading.Event()  # set when ready, and when the loop ended
        self.info: dict | None = None
        self.error: BaseException | None = None
        self._call = lambda: target(config, self.stop_flag, on_ready=self._on_ready, ctx=ctx)

    def _on_ready(self, info) -> None:
        self.info = info
        self.ready.set()

    def run(self) -> None:
        try:
            self._call()
        except BaseException as exc:  # noqa: BLE001 - reported by the watchdog as JobFailed
            self.error = exc
            log.error("the %s failed: %s", self.role, exc)
        finally:
            self.ready.set()

    def wait_ready(self, stop: sockets.StopFlag, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if stop.is_set():
                raise JobFailed("interrupted")
            if time.monotonic() > deadline:
                raise JobFailed(f"the {self.role} was not ready after {timeout:.0f} s")
        if self.info is None:
            raise JobFailed(f"the {self.role} stopped before it was ready: {self.error}")
        return self.info

    def check(self) -> None:
        if not self.is_alive():
            raise JobFailed(f"the {self.role} stopped: {self.error or 'no error given'}")

    def finish(self, timeout: float = 10.0) -> None:
        self.stop_flag.set()
        if self.ident is not None:
            self.join(timeout)


def single_image(job: VentilateConfig) -> str | None:
    """The job's only input image, or None when it has several (or none)."""
    found = []
    for path in job.input_paths():
        found.append(path)
        if len(found) > 1:
            return None
    return found[0] if found else None


def _single_tile(job: VentilateConfig, path: str) -> bool:
    """Whether the image is one tile under the job's tiling (read from its header)."""
    from zmqvision.models import resolve
    from zmqvision.scales import one_tile

    return one_tile(resolve(job.model, job.input_size), path, tile_size=job.tile_size,
                    scales=job.scales, min_size=job.min_size, full_pass=job.full_pass,
                    overlap=job.overlap)


def _thread_worker(plan: RunPlan, image: str | None) -> WorkerConfig:
    """The worker of a one-process run: LATENCY when the job is one tile (THROUGHPUT's
    streams would give that tile half the cores)."""
    wcfg = replace(plan.worker, threads=plan.worker.threads or default_threads(1),
                   worker_id=plan.worker.worker_id or f"local-{os.getpid()}-0")
    if (image is not None and plan.worker.hint == "THROUGHPUT"
            and _single_tile(plan.job, image)):
        wcfg = replace(wcfg, hint="LATENCY")
    return wcfg


def _run_in_threads(
    plan: RunPlan,
    image: str | None,
    stop: sockets.StopFlag,
    on_progress: Callable[[protocol.Progress], None] | None,
    on_wait: Callable[[str], None] | None,
) -> protocol.JobDone:
    """Sink and worker as threads on inproc endpoints, the ventilator in this thread."""
    from zmqvision.sink import run_sink
    from zmqvision.worker import run_worker

    name = f"inproc://zmqvision-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    results_ep, tiles_ep = f"{name}-results", f"{name}-tiles"
    wcfg = replace(_thread_worker(plan, image), tiles=tiles_ep, results=results_ep)
    log.info("one process: the sink and the worker (%s hint) run as threads, on inproc "
             "endpoints", wcfg.hint)
    ctx = zmq.Context()
    sink = _Role("sink", run_sink, replace(plan.sink, results=results_ep), ctx)
    worker = _Role("worker", run_worker, wcfg, ctx)
    vent = None
    try:
        vent = Ventilator(replace(plan.job, tiles=tiles_ep, sink=results_ep), ctx=ctx)
        cached = vent.first_input_cached()
        if not cached:
            worker.start()  # first: compiling the model is the longest wait
        else:  # the image is in the result cache: a worker only if it needs one after all
            vent.on_first_tiles = worker.start
        sink.start()
        vent.bind()
        vent.prefetch()  # decode the image while the worker loads the model
        ready = sink.wait_ready(stop, READY_TIMEOUT_S)
        vent.config = replace(vent.config, events=sockets.connectable(ready["events"]))
        if not cached:
            worker.wait_ready(stop, READY_TIMEOUT_S)

        def watchdog() -> None:
            for role in (worker, sink):
                if role.ident is not None:  # started
                    role.check()

        return vent.run(stop, on_progress, on_wait, watchdog=watchdog)
    finally:
        # The same order as with processes: the worker's last messages find listeners.
        worker.finish()
        if vent is not None:
            vent.close()
        sink.finish()
        ctx.destroy(linger=0)


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
    in_process, image = plan.in_process, None
    if in_process is None and plan.workers == 1:
        image = single_image(plan.job)
        in_process = image is not None
    if in_process:
        if plan.workers != 1:
            raise ValueError("in-process runs have one worker")
        return _run_in_threads(plan, image, stop, on_progress, on_wait)
    sink: Child | None = None
    sink_thread: _Role | None = None  # the sink of a job whose first image is cached
    sink_ctx: zmq.Context | None = None
    workers: list[Child] = []
    vent = None
    ipc_dir = tempfile.mkdtemp(prefix="zmqvision-") if zmq.has("ipc") else None
    threads = plan.worker.threads or default_threads(plan.workers)

    ready_by = [float("inf")]  # when the workers must have announced themselves

    def start_workers(tiles_ep: str, results_ep: str) -> None:
        ready_by[0] = time.monotonic() + READY_TIMEOUT_S
        for i in range(plan.workers):
            wcfg = replace(plan.worker, tiles=tiles_ep, results=results_ep,
                           threads=threads, worker_id=f"local-{os.getpid()}-{i}")
            workers.append(Child(worker_args(wcfg), plan.log_level))

    try:
        # When the first image is already in the result cache, the workers (and their
        # model) wait for the first image that needs tiles, and the sink runs as a thread
        # here: a run whose images are all cached starts no process at all. Otherwise
        # everything starts at once, and the job's clock starts once the workers are
        # ready, so its tiles/s leave out start-up.
        if ipc_dir is not None:  # every endpoint known now: start everything at once
            results_ep = f"ipc://{ipc_dir}/results"
            vent = Ventilator(replace(plan.job, tiles=f"ipc://{ipc_dir}/tiles",
                                      sink=results_ep))
            tiles_ep = vent.bind()
            cached = vent.first_input_cached()
            if cached:
                from zmqvision.sink import run_sink

                log.info("the first image is in the result cache: the sink runs as a "
                         "thread, workers start at the first image that needs tiles")
                sink_ctx = zmq.Context()
                sink_thread = _Role("sink", run_sink, replace(plan.sink, results=results_ep),
                                    sink_ctx)
                sink_thread.start()
                events = sink_thread.wait_ready(stop, READY_TIMEOUT_S)["events"]
            else:
                sink = Child(sink_args(replace(plan.sink, results=results_ep)),
                             plan.log_level)
                start_workers(tiles_ep, results_ep)
                _wait_ready([sink], stop, READY_TIMEOUT_S)
                events = sink.ready["events"]
            vent.config = replace(vent.config, events=sockets.connectable(events))
        else:
            sink = Child(sink_args(replace(plan.sink, results=LOCAL_ANY_PORT)),
                         plan.log_level)
            _wait_ready([sink], stop, READY_TIMEOUT_S)
            results_ep = sink.ready["results"]
            vent = Ventilator(replace(plan.job, tiles=LOCAL_ANY_PORT, sink=results_ep,
                                      events=sockets.connectable(sink.ready["events"])))
            tiles_ep = vent.bind()
            cached = vent.first_input_cached()
            if not cached:
                start_workers(tiles_ep, results_ep)
        vent.prefetch()  # decode the first images while the workers load the model
        if cached:
            vent.on_first_tiles = lambda: start_workers(tiles_ep, results_ep)
        else:
            _wait_ready(workers, stop, READY_TIMEOUT_S)

        def watchdog() -> None:
            if sink_thread is not None:
                sink_thread.check()
            elif not sink.alive():
                raise JobFailed(f"the sink stopped (exit code {sink.proc.returncode})")
            if not workers:
                return
            if not any(w.alive() for w in workers):
                codes = ", ".join(str(w.proc.returncode) for w in workers)
                raise JobFailed(f"every worker stopped (exit codes {codes})")
            pending = [w for w in workers if w.poll_ready(0) is None]
            if pending and time.monotonic() > ready_by[0]:
                raise JobFailed(f"{len(pending)} worker(s) not ready after "
                                f"{READY_TIMEOUT_S:.0f} s")

        return vent.run(stop, on_progress, on_wait, watchdog=watchdog)
    finally:
        # Workers first, while the ventilator and the sink still listen: their last
        # messages (results, Bye) would otherwise wait out their sockets' linger
        # (measured: 5 s per run without a sink, 0.5 s without a ventilator).
        _stop(workers)
        if vent is not None:
            vent.close()
        if sink is not None:
            _stop([sink])
        if sink_thread is not None:
            sink_thread.finish()
        if sink_ctx is not None:
            sink_ctx.destroy(linger=0)
        if ipc_dir is not None:
            shutil.rmtree(ipc_dir, ignore_errors=True)
