"""A sink and workers on this machine, for an embedded Pool (``zmqvision run``,
``zmqvision.detect``, ``zmqvision.Pool()``).

The children are the very commands a user would start by hand on many hosts
(`python -m zmqvision sink …`, `… worker …`), on ipc endpoints in a private temporary
directory (so two pools never collide, and every endpoint is known before anything binds:
the sink and the workers start at once), or, where ipc does not exist, local TCP with ports
the OS picks, the sink first. Each child announces itself on stdout with one JSON line once
it is ready (the sink: its bound endpoints; a worker: its id, after compiling its model).
Real commands rather than ``multiprocessing``: nothing is pickled, and a user's script
needs no ``if __name__ == "__main__"`` guard. Children stop when told (SIGTERM), and by
themselves when this process is gone.

``in_process``: the same sink and worker loops as threads of this process, on ``inproc://``
endpoints of one shared ZeroMQ context: for a one-image job, where starting two more Python
processes costs more than the whole job.
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
from dataclasses import replace

import zmq

from zmqvision import sockets
from zmqvision.engine import JobFailed
from zmqvision.sink import SinkConfig
from zmqvision.worker import WorkerConfig

log = logging.getLogger("zmqvision.run")

LOCAL_ANY_PORT = "tcp://127.0.0.1:0"
READY_TIMEOUT_S = 120.0


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

    def check(self) -> None:
        if not self.alive():
            raise JobFailed(f"the {self.name} stopped (exit code {self.proc.returncode})")

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


def stop_children(children: list[Child], grace: float = 10.0) -> None:
    """SIGTERM all, wait for them together, then SIGKILL what is left."""
    for c in children:
        c.terminate()
    deadline = time.monotonic() + grace
    for c in children:
        c.reap(deadline)


def wait_children(children: list[Child], stop: sockets.StopFlag, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(children)
    while pending:
        if stop.is_set():
            raise JobFailed("interrupted")
        if time.monotonic() > deadline:
            raise JobFailed(f"{len(pending)} {pending[0].name}(s) not ready after {timeout:.0f} s")
        pending = [c for c in pending if c.poll_ready(0.05) is None]


class RoleThread(threading.Thread):
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
        except BaseException as exc:  # noqa: BLE001 - reported by check() as JobFailed
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
        if self.ident is not None and not self.is_alive():
            raise JobFailed(f"the {self.role} stopped: {self.error or 'no error given'}")

    def finish(self, timeout: float = 10.0) -> None:
        self.stop_flag.set()
        if self.ident is not None:
            self.join(timeout)


def sink_args(cfg: SinkConfig) -> list[str]:
    """The `zmqvision sink …` arguments that rebuild ``cfg`` (command_line.SINK_FLAGS)."""
    from zmqvision.command_line import SINK_FLAGS, command_args

    return command_args("sink", cfg, SINK_FLAGS)


def worker_args(cfg: WorkerConfig) -> list[str]:
    """The `zmqvision worker …` arguments that rebuild ``cfg`` (command_line.WORKER_FLAGS)."""
    from zmqvision.command_line import WORKER_FLAGS, command_args

    return command_args("worker", cfg, WORKER_FLAGS)


class LocalCluster:
    """Starts and stops an embedded pool's sink and workers; tells the Pool where they are.

    Usage: ``start(engine, stop)`` (binds the Pool's engine where the workers look,
    connects it to the sink; the endpoints), ``wait_workers(stop)``, ``check()`` from a
    watchdog, ``stop_workers()`` then ``close()`` once the engine has closed.
    ``lazy_workers``: workers start at ``start_workers()`` (the first image that needs
    tiles), and the sink runs as a thread (a run whose images are all in the result cache
    starts no process)."""

    def __init__(self, sink: SinkConfig, worker: WorkerConfig, *, workers: int = 1,
                 log_level: int = logging.WARNING, in_process: bool = False,
                 lazy_workers: bool = False) -> None:
        if in_process and workers != 1:
            raise ValueError("in-process pools have one worker")
        self.sink_config, self.worker_config = sink, worker
        self.n_workers, self.log_level = workers, log_level
        self.in_process, self.lazy_workers = in_process, lazy_workers
        self.ctx: zmq.Context | None = None  # shared with the Pool's engine when in_process
        self.ipc_dir: str | None = None
        self.sink: Child | None = None
        self.sink_thread: RoleThread | None = None
        self.sink_ctx: zmq.Context | None = None
        self.workers: list[Child] = []
        self.worker_thread: RoleThread | None = None
        self.results_endpoint: str | None = None
        self._tiles: str | None = None
        self._ready_by = float("inf")  # when started workers must have announced themselves
        if in_process:
            self.ctx = zmq.Context()
            name = f"inproc://zmqvision-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.results_endpoint, self.tiles_bind = f"{name}-results", f"{name}-tiles"
        elif zmq.has("ipc"):
            self.ipc_dir = tempfile.mkdtemp(prefix="zmqvision-")
            self.results_endpoint = f"ipc://{self.ipc_dir}/results"
            self.tiles_bind = f"ipc://{self.ipc_dir}/tiles"
        else:
            self.tiles_bind = LOCAL_ANY_PORT

    def start(self, engine, stop: sockets.StopFlag) -> tuple[str, str]:
        """Start the sink and workers around a Pool's ``engine``; its tiles and the sink's
        events endpoints. Every endpoint known up front (ipc, inproc): workers first
        (compiling the model is the longest wait), the sink with them; otherwise the sink
        first, on a port the OS picks, then the tiles socket, then the workers."""
        if self.tiles_bind == LOCAL_ANY_PORT:
            self.start_sink()
            info = self.sink_ready(stop)
            tiles = engine.bind(self.tiles_bind)
            if not self.lazy_workers:
                self.start_workers(tiles)
        else:
            if not self.lazy_workers:
                self.start_workers(self.tiles_bind)
            self.start_sink()
            tiles = engine.bind(self.tiles_bind)
            info = self.sink_ready(stop)
        events = sockets.connectable(info["events"])
        engine.connect(self.results_endpoint, events)
        if self.lazy_workers:
            engine.on_first_tiles = lambda: self.start_workers(tiles)
        return tiles, events

    def start_sink(self) -> None:
        """Start the sink now (with ipc or inproc its endpoint is already known)."""
        cfg = self.sink_config
        if self.in_process or self.lazy_workers:
            from zmqvision.sink import run_sink

            ctx = self.ctx
            if ctx is None:
                ctx = self.sink_ctx = zmq.Context()
            results = self.results_endpoint or LOCAL_ANY_PORT
            self.sink_thread = RoleThread("sink", run_sink, replace(cfg, results=results), ctx)
            self.sink_thread.start()
        else:
            self.sink = Child(sink_args(replace(cfg, results=self.results_endpoint
                                                or LOCAL_ANY_PORT)), self.log_level)

    def sink_ready(self, stop: sockets.StopFlag) -> dict:
        """The sink's bound endpoints, once it has announced them."""
        if self.sink_thread is not None:
            info = self.sink_thread.wait_ready(stop, READY_TIMEOUT_S)
        else:
            wait_children([self.sink], stop, READY_TIMEOUT_S)
            info = self.sink.ready
        self.results_endpoint = sockets.connectable(info["results"])
        return info

    def start_workers(self, tiles: str | None = None) -> None:
        self._tiles = tiles = tiles or self._tiles
        self._ready_by = time.monotonic() + READY_TIMEOUT_S
        base = replace(self.worker_config, tiles=tiles, results=self.results_endpoint)
        if self.in_process:
            from zmqvision.worker import run_worker

            self.worker_thread = RoleThread("worker", run_worker, base, self.ctx)
            self.worker_thread.start()
            return
        threads = base.threads or default_threads(self.n_workers)
        for i in range(self.n_workers):
            wcfg = replace(base, threads=threads, worker_id=f"local-{os.getpid()}-{i}")
            self.workers.append(Child(worker_args(wcfg), self.log_level))

    def wait_workers(self, stop: sockets.StopFlag) -> None:
        if self.worker_thread is not None:
            self.worker_thread.wait_ready(stop, READY_TIMEOUT_S)
        elif self.workers:
            wait_children(self.workers, stop, READY_TIMEOUT_S)

    def check(self) -> None:
        """Raise JobFailed when the sink, or every worker, has stopped (a watchdog)."""
        for role in (self.sink_thread, self.worker_thread):
            if role is not None:
                role.check()
        if self.sink is not None:
            self.sink.check()
        if not self.workers:
            return
        if not any(w.alive() for w in self.workers):
            codes = ", ".join(str(w.proc.returncode) for w in self.workers)
            raise JobFailed(f"every worker stopped (exit codes {codes})")
        pending = [w for w in self.workers if w.poll_ready(0) is None]
        if pending and time.monotonic() > self._ready_by:
            raise JobFailed(f"{len(pending)} worker(s) not ready after {READY_TIMEOUT_S:.0f} s")

    def stop_workers(self) -> None:
        """Workers first, while the engine and the sink still listen: their last messages
        (results, Bye) would otherwise wait out their sockets' linger (measured: 5 s per
        run without a sink, 0.5 s without a ventilator)."""
        stop_children(self.workers)
        self.workers = []
        if self.worker_thread is not None:
            self.worker_thread.finish()

    def stop_sink(self) -> None:
        if self.sink is not None:
            stop_children([self.sink])
            self.sink = None
        if self.sink_thread is not None:
            self.sink_thread.finish()
        if self.sink_ctx is not None:
            self.sink_ctx.destroy(linger=0)
            self.sink_ctx = None

    def close(self) -> None:
        """After the engine has closed its sockets (it shares ``ctx`` in process)."""
        self.stop_workers()
        self.stop_sink()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None
        if self.ipc_dir is not None:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)
