"""``zmqvision.Pool``: hand the pool images from code and get their records back.

A Pool is the ventilator role as a library: an ``Engine`` in a thread of its own, which
binds the tiles socket the workers connect to and talks to a sink. ``Pool()`` starts an
embedded sink and workers on this machine (what ``zmqvision run`` does); ``Pool.connect``
joins a running cluster (the sink of ``zmqvision sink``, workers that connect to this
pool's tiles endpoint), with the same endpoints and CURVE keys as the commands.

Every call is safe from any thread or asyncio task at once. Requests with equal settings
share one job (a ``StreamJob``) whose records the sink publishes back; jobs take turns at
the workers, so one small request does not wait behind a large one. A request's record is
the JSON record the results file would hold for it (``error`` set for an image that could
not be used); a request that is cancelled or passes its deadline is withdrawn: its tiles
are not sent, its leases are released, the sink forgets it and its late results are
dropped.

    with zmqvision.Pool(model="centerface", workers=2) as pool:
        record = pool.submit("photo.jpg").result()
        for record in pool.map(paths, tile_size=(640, 640)):
            ...
        record = await pool.detect(upload_bytes)          # from asyncio
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

import numpy as np
import zmq

from zmqvision import protocol, sockets
from zmqvision.cache import open_cache
from zmqvision.embedded import LocalCluster
from zmqvision.engine import Engine, JobFailed, RequestTimeout
from zmqvision.idset import IdSet
from zmqvision.inputs import Loaded, ReadAhead, load_array, load_bytes, load_path, read_resume
from zmqvision.jobs import FileJob, Request, StreamJob
from zmqvision.plan import JobPlan, JobSettings
from zmqvision.results import make_record

log = logging.getLogger("zmqvision.pool")

NO_WORKER_NOTICE_S = 3.0  # a ventilator with no worker this long says how to start one
# A stream job (one per distinct settings) unused this long, with nothing pending, is ended
# (the sink forgets it); the next request with its settings starts a new one. A server
# that sees many settings over days keeps only those in use.
STREAM_IDLE_S = 600.0

Image = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray


class PoolClosed(RuntimeError):
    """The pool was closed (or its engine stopped) before the request was answered."""


class Pool:
    """A pool of workers to submit images to; see the module doc. Use as a context
    manager, or call ``close()``.

    ``settings`` (``model``, ``tile_size``, ``overlap``, ``merge``, ``score_threshold``, …,
    the fields of ``JobSettings``) are the defaults of every call; each call may override
    them. Tiles go only to workers that serve their model (docs/protocol.md, "Which
    worker gets a tile"): a call naming a model this pool's own workers do not serve is
    refused (ValueError); over ``Pool.connect`` it waits for such a worker to join.
    """

    def __init__(self, model: str = "centerface", *, workers: int = 1, device: str = "CPU",
                 threads: int | None = None, in_process: bool = False,
                 cache: str | None = "auto", window: int = 256, decode_threads: int = 2,
                 lease_s: float = 120.0, log_level: int = logging.WARNING,
                 batch: int = 1, **settings: Any) -> None:
        from zmqvision.sink import SinkConfig
        from zmqvision.tasks.stage2 import worker_model
        from zmqvision.worker import WorkerConfig

        defaults = JobSettings(model=model, **settings)
        # Records of a Pool's requests are published back, never written; the sink still
        # needs a results file of its own (file jobs such as run_files write there).
        self._tmp = tempfile.mkdtemp(prefix="zmqvision-pool-")
        sink = SinkConfig(out=os.path.join(self._tmp, "results.jsonl"),
                          events="tcp://127.0.0.1:0", cache=cache)
        worker = WorkerConfig(model=model, input_size=defaults.input_size, device=device,
                              threads=threads, score_threshold=defaults.score_threshold,
                              batch=batch,  # --batch: tiles per infer request
                              stage2=worker_model(defaults.stage2))
        cluster = LocalCluster(sink, worker, workers=workers, log_level=log_level,
                               in_process=in_process)
        self._setup(defaults, cache=cache, window=window, decode_threads=decode_threads,
                    lease_s=lease_s, cluster=cluster)

    @classmethod
    def connect(cls, host: str = "127.0.0.1", *, tiles: str | None = None,
                sink: str | None = None, events: str | None = None,
                curve: str | None = None, model: str = "centerface",
                cache: str | None = "auto", window: int = 256, decode_threads: int = 2,
                lease_s: float = 120.0, wire: str = "auto", ctx: zmq.Context | None = None,
                insecure: bool = False, **settings: Any) -> Pool:
        """A pool over a running cluster: the sink at ``host`` (``tcp://hostA`` or
        ``hostA``; ``sink``/``events`` override its endpoints), tiles bound at ``tiles``
        (default ``tcp://127.0.0.1:5557``: workers on this host; give ``tcp://*:5557``
        with ``curve`` for workers elsewhere, or ``insecure=True`` on a network you
        trust: a plain-text bind other hosts can reach is refused otherwise)."""
        from zmqvision import security

        host = host.removeprefix("tcp://")
        tiles = tiles or sockets.bind_endpoint(sockets.TILES_PORT)
        if not insecure:
            security.exposure({"tiles": tiles}, curve, False)
        self = cls.__new__(cls)
        self._setup(JobSettings(model=model, **settings), cache=cache, window=window,
                    decode_threads=decode_threads, lease_s=lease_s, wire=wire, curve=curve,
                    ctx=ctx, tiles=tiles,
                    sink=sink or sockets.connect_endpoint(sockets.RESULTS_PORT, host),
                    events=events or sockets.connect_endpoint(sockets.EVENTS_PORT, host))
        return self

    @classmethod
    def for_run(cls, cluster: LocalCluster, *, cache: str | None, wire: str = "auto",
                lease_s: float = 120.0, curve: str | None = None,
                stop: sockets.StopFlag | None = None) -> Pool:
        """The pool of ``zmqvision run``: a cluster its caller configured (``run.py``),
        stopped by the caller's ``stop`` (SIGINT, SIGTERM) as well as by ``close``."""
        self = cls.__new__(cls)
        self._setup(JobSettings(model=cluster.worker_config.model), cache=cache,
                    window=256, decode_threads=2, lease_s=lease_s, wire=wire, curve=curve,
                    cluster=cluster, stop=stop)
        return self

    def _setup(self, defaults: JobSettings, *, cache: str | None, window: int,
               decode_threads: int, lease_s: float, wire: str = "auto",
               curve: str | None = None, cluster: LocalCluster | None = None,
               ctx: zmq.Context | None = None, stop: sockets.StopFlag | None = None,
               tiles: str | None = None, sink: str | None = None,
               events: str | None = None) -> None:
        self.defaults = defaults
        self.window = window
        self.cluster = cluster
        self._lock = threading.Lock()
        self._streams: dict[JobSettings, StreamJob] = {}
        self._used: dict[JobSettings, float] = {}  # when each stream was last asked for
        self.stream_idle_s = STREAM_IDLE_S
        self._swept_at = time.monotonic()
        self._plans: dict[JobSettings, JobPlan] = {}
        self._pending: set[Request] = set()
        self._closed = False
        self._failure: BaseException | None = None
        # The pool's own stop (close); a caller's ``stop`` (run's SIGINT) also ends it, but
        # closing the pool must not look like an interrupt to that caller.
        self._stop = sockets.StopFlag()
        self._interrupt = stop
        self.cache = open_cache(cache)
        self.decoder = ThreadPoolExecutor(max(1, decode_threads), "zv-decode")
        self.engine = None
        try:
            self.engine = Engine(ctx=cluster.ctx if cluster else ctx, wire=wire,
                                 lease_s=lease_s, curve=curve, stop=self._stop)
            if cluster is None:
                self.tiles_endpoint = self.engine.bind(tiles)
                self.engine.connect(sink, events)
            else:
                self.tiles_endpoint, self.events_endpoint = cluster.start(
                    self.engine, self._interrupt or self._stop)
        except BaseException:
            self._teardown()
            raise
        self._thread = threading.Thread(target=self._loop, name="zv-pool", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if self._interrupt is not None and self._interrupt.is_set():
                    self._stop.set()
                    break
                self.engine.step()
        except BaseException as exc:  # noqa: BLE001 - every caller hears of it
            log.error("the pool's engine stopped: %s", exc)
            self._failure = exc
        finally:
            self._fail_pending(PoolClosed(f"the pool stopped: {self._failure}"
                                          if self._failure else "the pool was closed"))

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        for request in pending:
            request.fail(exc)

    def _call(self, fn: Callable[[], None]) -> None:
        if self._closed or self._failure is not None:
            raise PoolClosed("the pool is closed")
        self.engine.call_soon(fn)

    # ------------------------------------------------------------------ settings

    def _settings(self, overrides: dict[str, Any]) -> JobSettings:
        unknown = set(overrides) - JobSettings.names()
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        merge = overrides.get("merge")
        if isinstance(merge, str):
            from zmqvision.merge import MergeConfig

            overrides = {**overrides, "merge": MergeConfig(method=merge)}
        for key in ("tile_size", "input_size"):
            if isinstance(overrides.get(key), int):
                overrides = {**overrides, key: (overrides[key], overrides[key])}
        return replace(self.defaults, **overrides)

    def plan(self, settings: JobSettings) -> JobPlan:
        """The resolved plan for these settings (resolved once per distinct settings)."""
        with self._lock:
            plan = self._plans.get(settings)
        if plan is None:
            plan = JobPlan(settings)  # ValueError here, in the caller's thread
            self._check_served(plan)
            with self._lock:
                plan = self._plans.setdefault(settings, plan)
        return plan

    def _check_served(self, plan: JobPlan) -> None:
        """A pool that started its own workers knows every model they serve: a call that
        needs another (a different ``model``, or a second stage they were not started
        with) is refused here, in the caller's thread, rather than waiting for a worker
        that will never come (tiles go only to workers that serve their model). A pool
        over a running cluster cannot know: it waits, and says so (``_say_unserved``)."""
        served = self._served_refs
        if served is None:
            return
        needed = {plan.model_ref: "model"}
        if plan.stage2 is not None:
            needed[plan.stage2.model] = f"second stage ({plan.stage2.kind})"
        for ref, what in needed.items():
            if ref not in served:
                raise ValueError(
                    f"this pool's workers serve {', '.join(sorted(served))}, not the "
                    f"{what} {ref}: open a Pool with that model (Pool(model=...), and "
                    f"stage2=... for a second stage) or use Pool.connect to a cluster "
                    f"whose workers serve it")

    @functools.cached_property
    def _served_refs(self) -> frozenset[str] | None:
        """The refs its own workers' heartbeats give (resolved as they resolve them, once:
        their config does not change); None for a pool over a running cluster, or when
        its workers' model does not resolve (they report that themselves)."""
        if self.cluster is None:
            return None
        from zmqvision.models import resolve

        config = self.cluster.worker_config
        try:
            refs = {resolve(config.model, config.input_size, config.task).ref}
            if config.stage2 is not None:
                refs.add(resolve(config.stage2).ref)
        except ValueError:
            return None
        return frozenset(refs)

    def _stream(self, settings: JobSettings) -> StreamJob:
        """The job that ``submit`` calls with these settings share; the caller that made
        it announces it (a request queued meanwhile waits: jobs are admitted from only
        once the engine has them)."""
        now = time.monotonic()
        with self._lock:
            job = self._streams.get(settings)
            if job is not None:
                self._used[settings] = now
            sweep = now - self._swept_at >= self.stream_idle_s / 4
            if sweep:
                self._swept_at = now
        if sweep:
            self._call(self._expire_idle)
        if job is None:
            made = self._new_stream(settings)
            with self._lock:
                job = self._streams.setdefault(settings, made)
                self._used[settings] = now
            if job is made:
                self._call(lambda: self.engine.add_job(job))
        return job

    def _expire_idle(self) -> None:
        """In the engine's thread: end the stream jobs unused for ``stream_idle_s`` with no
        request pending (a request that looked one up just before is re-queued on a new
        job by ``_queue``)."""
        now = time.monotonic()
        with self._lock:
            busy = {id(r.job) for r in self._pending}
            idle = [(s, j) for s, j in self._streams.items() if id(j) not in busy
                    and now - self._used.get(s, now) > self.stream_idle_s]
            for settings, _ in idle:
                del self._streams[settings]
                self._used.pop(settings, None)
                self._plans.pop(settings, None)
        for _, job in idle:
            self.engine.end_job(job)
            self.engine.remove_job(job)

    @property
    def stream_jobs(self) -> int:
        """Stream jobs alive (one per distinct settings used within ``stream_idle_s``)."""
        return len(self._streams)

    def _new_stream(self, settings: JobSettings) -> StreamJob:
        plan = self.plan(settings)
        return StreamJob(protocol.new_job_id(), plan, window=self.window, load=self._load,
                         decoder=self.decoder, wake=self.engine.wake.wake,
                         lookup=plan.lookup_in(self.cache))

    # ------------------------------------------------------------------ requests

    def submit(self, image: Image, *, name: str | None = None, timeout: float | None = None,
               **settings: Any) -> Future:
        """Recognise one image (a path, encoded bytes, or an RGB ``uint8`` array); a
        ``Future`` of its record. ``timeout``: seconds until the request is withdrawn and
        the future raises ``RequestTimeout``. Cancelling the future withdraws it too."""
        return self._submit(self._stream(self._settings(settings)), image, name, timeout)

    def _submit(self, job: StreamJob, image: Image, name: str | None,
                timeout: float | None) -> Future:
        name = future_name(image) if name is None else name
        deadline = None if timeout is None else time.monotonic() + timeout
        request = Request(name=name, future=Future(), source=image, deadline=deadline,
                          job=job)
        with self._lock:
            if self._closed:
                raise PoolClosed("the pool is closed")
            self._pending.add(request)
        request.future.add_done_callback(lambda f: self._finished(request, f))
        self._call(lambda: self._queue(request))
        return request.future

    def _queue(self, request: Request) -> None:
        """In the engine's thread: the request waits its turn to be decoded."""
        if request.finished:
            return
        if request.job.end is not None:  # its stream job expired after it was looked up
            request.job = self._stream(request.job.plan.settings)
        request.job.waiting.append(request)
        self.engine.watch_deadline(request)

    def _load(self, request: Request) -> Loaded:
        """On a decode thread: read (a path), hash, look up in the cache, decode."""
        image, job = request.source, request.job
        request.source = None  # the pixels replace it
        max_pixels = job.plan.settings.max_pixels
        if isinstance(image, np.ndarray):
            return load_array(image, request.name, max_pixels, job.lookup)
        if isinstance(image, bytes | bytearray | memoryview):
            return load_bytes(bytes(image), request.name, max_pixels, job.lookup,
                              job.plan.reducer())
        if isinstance(image, str | os.PathLike):
            loaded = load_path(os.fspath(image), max_pixels, job.lookup, job.plan.reducer(),
                               max_bytes=job.plan.settings.max_file_bytes)
            loaded.path = request.name  # the record names it as the caller did
            return loaded
        return Loaded(request.name, None, {"type": "unsupported_format", "message":
                      f"{request.name}: a {type(image).__name__} is not an image (give a "
                      "path, encoded bytes or a uint8 array)"})

    def _finished(self, request: Request, future: Future) -> None:
        with self._lock:
            self._pending.discard(request)
        if future.cancelled() and not self._closed:
            self.engine.call_soon(lambda: self.engine.withdraw(request))

    def map(self, images: Iterable[Image], *, timeout: float | None = None,
            ahead: int | None = None, **settings: Any) -> Iterator[dict]:
        """Records of many images, in the order they complete.

        The images are a job of their own, which takes turns with every other job at the
        workers (a ``submit`` meanwhile is not queued behind them). At most ``ahead``
        images (default: the window, 256) are submitted and not yet answered (and only a
        few of them decoded ahead), so memory stays bounded for millions of inputs. A
        request that times out yields a record with ``error.type == "timeout"``; leaving
        the loop early withdraws what is pending."""
        limit = max(1, ahead or self.window)
        job = self._new_stream(self._settings(settings))
        self._call(lambda: self.engine.add_job(job))
        pending: set[Future] = set()
        names: dict[Future, str] = {}
        waiting = getattr(images, "waiting", None)  # live inputs: records come meanwhile
        try:
            for image in (waiting(0.1) if waiting is not None else images):
                if isinstance(image, str) and not image:  # none came: hand out what is done
                    done = {f for f in pending if f.done()}
                    pending -= done
                    yield from (_record_of(f, names.pop(f)) for f in done)
                    continue
                future = self._submit(job, image, None, timeout)
                pending.add(future)
                names[future] = future_name(image)
                while len(pending) >= limit:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (_record_of(f, names.pop(f)) for f in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (_record_of(f, names.pop(f)) for f in done)
        finally:
            for future in pending:
                future.cancel()
            if not self._closed and self._failure is None:
                self.engine.call_soon(lambda: (self.engine.end_job(job),
                                               self.engine.remove_job(job)))

    async def detect(self, image: Image, *, name: str | None = None,
                     timeout: float | None = None, **settings: Any) -> dict:
        """``submit`` for asyncio: awaiting it does not block the event loop; cancelling
        the task withdraws the request."""
        import asyncio  # here: 20 ms of start-up that only asyncio callers need

        return await asyncio.wrap_future(self.submit(image, name=name, timeout=timeout,
                                                     **settings))

    # ------------------------------------------------------------------ state, for monitors

    @property
    def pending(self) -> int:
        """Requests submitted and not yet answered (queued, decoding or in flight)."""
        return len(self._pending)

    def workers_alive(self, model: str | None = None) -> int:
        """Workers this pool hears from: heard within the dispatcher's liveness limit
        (``dead_periods`` of their heartbeat period); with ``model`` (``name@version``, a
        plan's ``model_ref``) only those whose heartbeats name it. Read from any thread; the
        engine thread drops a silent worker at its next housekeeping pass anyway."""
        d = self.engine.dispatch
        now = time.monotonic()
        slots = tuple(d.workers.values())  # one C-level copy: the engine thread may add one
        return sum(now - s.last_heard <= d.dead_periods * s.period
                   and (model is None or s.model == model) for s in slots)

    # ------------------------------------------------------------------ file jobs

    def reader(self, config, plan: JobPlan | None = None, paths=None) -> ReadAhead:
        """Start reading and decoding a file job's first inputs now (``zmqvision run``
        does it while its workers load the model, which is otherwise idle time).
        ``paths``: other inputs than the config's (``zmqvision.follow(DIR)``)."""
        plan = plan or self.plan(JobSettings.of(config))
        if paths is None:
            source = getattr(config, "inputs_source", None)
            paths = source() if source is not None else config.input_paths()
        return ReadAhead(paths, self.decoder, config.read_ahead,
                         plan.settings.max_pixels, plan.lookup_in(self.cache), plan.reducer(),
                         on_ready=self.engine.wake.wake,
                         max_bytes=plan.settings.max_file_bytes,
                         frames=getattr(config, "frames", "first"),
                         fps=getattr(config, "fps", None),
                         decode=self.engine.workers.wire != "image")

    def run_files(self, config, stop: sockets.StopFlag | None = None,
                  on_progress: Callable[[protocol.Progress], None] | None = None,
                  on_wait: Callable[[str], None] | None = None,
                  watchdog: Callable[[], None] | None = None,
                  reader: ReadAhead | None = None,
                  resumed: tuple[str | None, IdSet] | None = None,
                  paths=None) -> protocol.JobDone:
        """A job over files, written by the sink to its results file, as ``zmqvision run``
        and ``ventilate`` do (``config``: a ``VentilateConfig``); its ``JobDone``.

        The files are read and decoded from now on, while the workers start; the job is
        announced once they are ready, so its clock leaves out start-up. ``resumed``:
        ``read_resume(config.resume)`` when the caller has read it already. ``paths``:
        other inputs than the config's, e.g. ``zmqvision.follow(DIR)``: a live job, which
        ends when its inputs do (``until``) and tells the sink its lag as it goes."""
        from zmqvision.follow import _live_job_class, is_live
        stop = stop or sockets.StopFlag()
        plan = self.plan(JobSettings.of(config))
        if resumed is None:
            resumed = read_resume(config.resume) if config.resume else (None, None)
        resumed_id, already = resumed
        job_id = config.job_id or resumed_id or protocol.new_job_id()
        reader = reader or self.reader(config, plan, paths)
        job_class = _live_job_class() if is_live(reader.paths) else FileJob
        job = job_class(job_id, plan, window=config.window, read_ahead=reader,
                        already=already, on_progress=on_progress)
        try:
            if self.cluster is not None and not self.cluster.lazy_workers:
                self.cluster.wait_workers(stop)
            self._call(lambda: self.engine.add_job(job))
            done = self._wait_done(job, config, stop, on_wait, watchdog)
            self._report(job, config, on_wait)
            d = self.engine.dispatch
            logging.getLogger("zmqvision.ventilator").info(
                "job %s: %d images, %d tiles sent (%d again after a lost worker or lease, %d "
                "backup copies), %d images re-read to cut them, %d answered from the result "
                "cache, %d decoded at reduced size", job.id, job.images, job.tiles_sent,
                d.requeued, d.backups_sent, self.engine.rereads, job.cached, job.reduced)
            return done
        finally:
            if self._failure is None and not self._closed:
                self.engine.call_soon(lambda: self.engine.remove_job(job))
            else:
                job.close()

    def _report(self, job: FileJob, config, on_wait: Callable[[str], None] | None) -> None:
        """After the job: what the folder walk skipped (not images by their extension) and
        what ``--resume`` carried over, for the summary."""
        from zmqvision.console import plural, skipped_notice

        say = on_wait or (lambda m: log.info("%s", m))
        walk = job.reader.paths  # the io.ImageWalk the reader consumed
        if getattr(walk, "skipped", 0):
            say(skipped_notice(walk.skipped, walk.skipped_examples))
        if getattr(walk, "dropped", 0):
            say(f"{plural(walk.dropped, 'input')} dropped for being behind (--when-behind "
                f"drop-oldest: the pool was slower than they came)")
        if config.resume and job.skipped:
            say(f"resumed: {plural(job.skipped, 'image')} carried over from {config.resume} "
                f"(their records were already there)")

    def _wait_done(self, job: FileJob, config, stop: sockets.StopFlag,
                   on_wait: Callable[[str], None] | None,
                   watchdog: Callable[[], None] | None) -> protocol.JobDone:
        """Wait for the sink's JobDone; meanwhile tell the user what they can act on: the
        events endpoint when ``run``'s default port was taken, no worker connected (a
        ventilator's workers are the user's to start), no word from the sink."""
        from zmqvision.console import worker_hint

        say = on_wait or (lambda m: log.warning("%s", m))
        started = time.monotonic()
        warned = False
        if self.cluster is not None:
            wanted = self.cluster.sink_config.events.rpartition(":")[2]
            got = getattr(self, "events_endpoint", None)
            if got and wanted not in ("0", got.rpartition(":")[2]):
                say(f"{self.cluster.sink_config.events} is taken: this run publishes its "
                    f"events on {got}; watch it with `zmqvision watch --connect {got}`")
        dispatch = self.engine.dispatch
        live_status = getattr(job, "status", None)  # a live job's lag, for the sink
        next_status = 0.0
        no_worker_since: float | None = None
        worker_warned = ever_worker = False
        unserved_said: frozenset[str] = frozenset()

        def no_worker() -> str:
            what = "every worker has left" if ever_worker else "no worker has connected to"
            return f"{what} {self.tiles_endpoint}; {worker_hint(self.tiles_endpoint, config.sink)}"

        while True:
            try:
                return job.done.result(timeout=0.05)
            except TimeoutError:
                pass
            if stop.is_set():
                raise JobFailed("interrupted")
            if self._failure is not None:
                raise JobFailed(f"the pool stopped: {self._failure}")
            if watchdog is not None:
                watchdog()
            if self.cluster is not None:
                self.cluster.check()
            now = time.monotonic()
            if live_status is not None and now >= next_status:
                from zmqvision.follow import STATUS_S

                next_status = now + STATUS_S
                self._call(lambda: self.engine.tell_sink(live_status(self.engine.window)))
            if self.cluster is None:
                if dispatch.workers:
                    ever_worker, no_worker_since = True, None
                elif no_worker_since is None:
                    no_worker_since = now
                elif now - no_worker_since > NO_WORKER_NOTICE_S and not worker_warned:
                    say(f"{no_worker()} (waiting)")
                    worker_warned = True
                if dispatch.workers and self.engine.unserved:
                    unserved_said = self._say_unserved(config, now, unserved_said, say)
            if config.timeout is not None and now - started > config.timeout:
                why = f": {no_worker()}" if self.cluster is None and not dispatch.workers else ""
                raise JobFailed(f"job {job.id} not complete after {config.timeout:.0f} s{why}")
            quiet = now - (self.engine.sink.last_heard or started)
            if quiet > 5 and not warned:
                say(f"no word from the sink at {self.engine.sink.events_endpoint} for "
                    f"{quiet:.0f} s; waiting")
                warned = True

    def _say_unserved(self, config, now: float, said: frozenset[str],
                      say: Callable[[str], None]) -> frozenset[str]:
        """Workers are connected, but tiles of a model none of them serves have waited
        ``NO_WORKER_NOTICE_S``: say which model and the worker that would serve it (once
        per model; the job waits for one). Returns the models said."""
        from zmqvision.console import worker_hint

        for model, (since, flags) in list(self.engine.unserved.items()):
            if model not in said and now - since > NO_WORKER_NOTICE_S:
                say(f"no worker connected to {self.tiles_endpoint} serves {model}: its "
                    f"tiles wait; {worker_hint(self.tiles_endpoint, config.sink, flags)} "
                    "(waiting)")
                said |= {model}
        return said

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Withdraw what is pending (its futures raise ``PoolClosed``), stop the engine,
        then the embedded workers and sink (in that order: their last messages find
        listeners)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.cluster is not None:
            self.cluster.stop_workers()
        self._stop.set()
        self._thread.join(30)
        self._teardown()

    def _teardown(self) -> None:
        self._fail_pending(PoolClosed("the pool was closed"))
        self.decoder.shutdown(wait=True, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.cache is not None:
            self.cache.close()
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def future_name(image: Image) -> str:
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return "<array>" if isinstance(image, np.ndarray) else "<bytes>"


def _record_of(future: Future, name: str) -> dict:
    """A finished request's record; a timeout becomes a record with its error."""
    try:
        return future.result()
    except RequestTimeout as exc:
        error = {"type": "timeout", "message": str(exc)}
    except PoolClosed as exc:
        error = {"type": "pool_closed", "message": str(exc)}
    return make_record(path=name, image_id=None, job=None, width=0, height=0, model=None,
                       labels=[], detections=None, error=error)
