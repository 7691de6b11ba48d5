"""Memory of each role at 1k, 10k and 100k images, and the time to recover from a killed
worker.

The claim under test (README, docs/reliability.md "Backpressure and memory"): the pipeline
streams, with bounded windows, so no role's memory grows with the size of the job.

**Memory.** For each job size N, the first N of a set of small JPEGs (``--image-size`` 128:
one tile per image for blazeface-short; subfolders of 1000 files, generated once from
scikit-image's bundled photos into ``--cache``, /tmp/zmqvision-bench-memory, and reused) are
run with every role in its own process, the commands a user types on many hosts:

    python -m zmqvision sink --out OUT --bind-results tcp://127.0.0.1:P1
        --bind-events tcp://127.0.0.1:P2 --overwrite
    python -m zmqvision ventilate DIR… --model M --bind tcp://127.0.0.1:P0
        --sink-results tcp://127.0.0.1:P1 --sink-events tcp://127.0.0.1:P2 --no-progress
    python -m zmqvision worker --model M --tiles tcp://127.0.0.1:P0
        --results tcp://127.0.0.1:P1 --threads 1                          (× --workers 2)

Sink and workers also get the hidden ``--announce --parent-pid --log-level`` that
``zmqvision run`` gives its children (the benchmark learns when they are ready; they stop
if it dies). Workers start after the sink, before the ventilator. A thread reads
``VmRSS``, ``VmHWM``, ``RssAnon`` and the CPU time of every process every ``--interval``
(0.5 s). Per role: RSS
after start-up (the first sample after the sink's first progress event that shows a
finished tile), RSS at the end (the last sample), the peak (``VmHWM`` read just before the
role is stopped; the ventilator exits by itself on JobDone, so its peak is its last
sampled ``VmHWM``, read as JobDone arrives), growth = peak − start, and the growth of
anonymous memory (``RssAnon``, end − start). Throughput: tiles from the first finished
tile to JobDone, on the sink's clock. The output is checked: one record per image.

**Recovery.** The same sink and ``--recovery-workers`` (3) workers (``--threads 1`` each)
as children, over the first ``--recovery-images`` (2000) images, with the ventilator
(``zmqvision.ventilator.Ventilator``, as ``zmqvision run`` uses it) in a thread of this
process, so that its ``Dispatcher`` can be timed: its methods are wrapped (not changed) to
record the first tile sent, when the killed worker is declared dead (missed heartbeats,
or a send to it that failed), which tiles were requeued, and when the sink acknowledged
the last of them. In the kill variants one worker is SIGKILLed once the sink's progress
shows ``--kill-at`` (30 %) of the tiles done. Variants: undisturbed, kill with the default
heartbeat (1 s; dead after 3 periods), kill with ``--heartbeat 0.5``; each runs
``--recovery-repeats`` (3) times, interleaved, the order rotated each repeat, after one
warm-up run; job time = first tile sent → JobDone received, and the table shows medians
and the per-repeat differences to the undisturbed run.

    python benchmarks/memory.py                              # 1k, 10k, 100k + recovery
    python benchmarks/memory.py --sizes 1000,10000 --no-recovery
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import cpu_seconds, free_port, markdown_table

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry",
          "hubble_deep_field", "retina")
PER_FOLDER = 1000
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "zmqvision-bench-memory"
ROLES = ("sink", "worker", "ventilator")

# ---------------------------------------------------------------------------- inputs

_photos_cache: list | None = None


def _photos():
    global _photos_cache
    if _photos_cache is None:
        from PIL import Image
        from skimage import data as skdata

        _photos_cache = [Image.fromarray(getattr(skdata, name)()).convert("RGB")
                         for name in PHOTOS]
    return _photos_cache


def _render_folder(job: tuple[str, int, int, int, int]) -> str:
    """``count`` JPEGs of size×size into ``folder``: a random square crop of a random
    bundled photo, scaled, maybe flipped, with the global index stamped into three pixels
    (so every image has different bytes, hence a different content hash)."""
    from PIL import Image

    folder_s, start, count, size, seed = job
    folder = Path(folder_s)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, start])
    photos = _photos()
    for i in range(start, start + count):
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        short = min(w, h)
        side = int(rng.integers(max(16, short // 5), short + 1))
        x = int(rng.integers(0, w - side + 1))
        y = int(rng.integers(0, h - side + 1))
        img = photo.resize((size, size), Image.BILINEAR, box=(x, y, x + side, y + side))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        for k in range(3):
            v = (i >> (8 * k)) & 255
            img.putpixel((k, 0), (v, 255 - v, v))
        img.save(folder / f"{i:07d}.jpg", quality=88)
    (folder / ".complete").write_text(f"{count}\n")  # hidden: never walked as an input
    return folder_s


def ensure_images(cache: Path, n: int, size: int, log) -> tuple[Path, float]:
    """The image set ``cache/img{size}`` holds at least ``n`` images (folders of 1000,
    each generated once: a folder with its ``.complete`` marker is reused)."""
    root = cache / f"img{size}"
    jobs = []
    for f in range((n + PER_FOLDER - 1) // PER_FOLDER):
        folder = root / f"d{f:04d}"
        if not (folder / ".complete").exists():
            jobs.append((str(folder), f * PER_FOLDER, PER_FOLDER, size, 1234))
    t0 = time.monotonic()
    if jobs:
        log(f"generating {len(jobs) * PER_FOLDER} images of {size}x{size} in {root} ...")
        with ProcessPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            for done, _ in enumerate(pool.map(_render_folder, jobs), 1):
                if done % 10 == 0:
                    log(f"  {done}/{len(jobs)} folders")
    return root, time.monotonic() - t0


def job_inputs(root: Path, n: int) -> list[str]:
    """The first ``n`` images: whole folders, then single files of the next one."""
    full, rest = divmod(n, PER_FOLDER)
    inputs = [str(root / f"d{f:04d}") for f in range(full)]
    inputs += [str(root / f"d{full:04d}" / f"{full * PER_FOLDER + i:07d}.jpg")
               for i in range(rest)]
    return inputs


# ---------------------------------------------------------------------------- /proc


def _status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon in KiB; {} once the process is gone (or a zombie)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out if "VmRSS" in out else {}




@dataclass
class Sample:
    t: float
    rss: int
    hwm: int
    anon: int
    cpu: float


class Sampler(threading.Thread):
    """Reads /proc/PID/status of every registered process every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.samples: dict[str, list[Sample]] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def add(self, name: str, pid: int) -> None:
        with self._lock:
            self.pids[name] = pid
            self.samples.setdefault(name, [])
        self.sample_once(name)

    def sample_once(self, name: str) -> Sample | None:
        pid = self.pids[name]
        cpu = cpu_seconds(pid)
        st = _status(pid)
        if not st or cpu is None:
            return None
        s = Sample(time.monotonic(), st["VmRSS"], st.get("VmHWM", 0), st.get("RssAnon", 0),
                   cpu)
        with self._lock:
            self.samples[name].append(s)
        return s

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            with self._lock:
                names = list(self.pids)
            for name in names:
                self.sample_once(name)

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:
            self.join(5)

    def first_after(self, name: str, t: float) -> Sample | None:
        with self._lock:
            return next((s for s in self.samples[name] if s.t >= t), None)

    def last(self, name: str, before: float | None = None) -> Sample | None:
        with self._lock:
            got = [s for s in self.samples[name] if before is None or s.t <= before]
            return got[-1] if got else None


# ---------------------------------------------------------------------------- processes




def zv_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "zmqvision", *args]


def stop_procs(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM all, wait for them together, then SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def wait_announce(proc: subprocess.Popen, what: str, timeout: float = 120.0) -> dict:
    """The JSON line a child prints once ready (``--announce``)."""
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line:
                return json.loads(line)["ready"]
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


@dataclass
class RoleMem:
    role: str  # "sink", "worker 1", …
    start: Sample | None = None
    end: Sample | None = None
    peak_kb: int = 0


@dataclass
class MemRun:
    n: int
    images: int = 0
    tiles: int = 0
    records: int = 0
    seconds: float = 0.0  # JobDone.seconds (from JobStart)
    steady: float = 0.0  # tiles/s from the first finished tile to JobDone
    first_tile: float = 0.0  # job clock when the first finished tile was reported
    wall: float = 0.0  # ventilate process start to exit
    roles: list[RoleMem] = field(default_factory=list)
    series: dict[str, list[Sample]] = field(default_factory=dict)  # first tile → JobDone


class Events:
    """A SUB socket on the sink's events: progress, JobDone and the sink's status."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        from zmqvision import protocol

        self.protocol = protocol
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for topic in (protocol.MsgType.PROGRESS, protocol.MsgType.JOB_DONE,
                      protocol.MsgType.SINK_STATUS):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic.tag)
        self.sub.connect(endpoint)

    def next(self, timeout_ms: int = 100):
        if not self.sub.poll(timeout_ms):
            return None
        try:
            return self.protocol.decode(self.sub.recv_multipart())
        except self.protocol.ProtocolError:
            return None

    def close(self) -> None:
        self.sub.close()
        self.ctx.term()


class Procs:
    """Child processes of one run, stopped in order in ``close``."""

    def __init__(self, folder: Path, tag: str) -> None:
        self.folder, self.tag = folder, tag
        self.items: list[tuple[str, subprocess.Popen, Path]] = []

    def spawn(self, name: str, args: list[str], announce: bool) -> subprocess.Popen:
        err = self.folder / f"{self.tag}-{name.replace(' ', '')}.log"
        with open(err, "wb") as errf:
            p = subprocess.Popen(zv_cmd(*args), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if announce else errf, stderr=errf)
        self.items.append((name, p, err))
        return p

    def log_of(self, proc: subprocess.Popen) -> Path:
        return next(e for _, p, e in self.items if p is proc)

    def close(self) -> None:
        """The ventilator (normally gone already), then the workers, then the sink: the
        order ``run_job`` uses, so workers do not wait out their linger on a gone sink."""
        def pick(prefix):
            return [p for name, p, _ in self.items if name.startswith(prefix)]

        stop_procs(pick("ventilator"))
        stop_procs(pick("worker"))
        stop_procs(pick("sink"))
        for _, p, _ in self.items:
            if p.stdout is not None:
                p.stdout.close()


def child_flags() -> list[str]:
    """What ``zmqvision run`` gives its children: announce readiness, stop with us."""
    return ["--announce", "--parent-pid", str(os.getpid()), "--log-level", "30"]


def start_sink(procs: Procs, out: Path, results_ep: str, events_ep: str) -> subprocess.Popen:
    sink = procs.spawn("sink", ["sink", "--out", str(out), "--bind-results", results_ep,
                                "--bind-events", events_ep, "--overwrite", *child_flags()],
                       True)
    wait_announce(sink, "the sink")
    return sink


def start_workers(procs: Procs, n: int, model: str, tiles_ep: str, results_ep: str,
                  threads: int, heartbeat: float, tag: str) -> list[subprocess.Popen]:
    ws = [procs.spawn(f"worker {i + 1}",
                      ["worker", "--model", model, "--tiles", tiles_ep, "--results", results_ep,
                       "--threads", str(threads), "--heartbeat", f"{heartbeat:g}",
                       "--id", f"{tag}-w{i + 1}", *child_flags()], True)
          for i in range(n)]
    for i, w in enumerate(ws):
        wait_announce(w, f"worker {i + 1}")
    return ws


def memory_run(inputs: list[str], n: int, model: str, workers: int, threads: int,
               interval: float, folder: Path, window: int, log) -> MemRun:
    from zmqvision import protocol

    tiles_ep, results_ep, events_ep = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    out = folder / f"results-{n}.jsonl"
    job_id = f"mem{n}-{uuid.uuid4().hex[:8]}"
    tag = f"mem{n}"
    procs = Procs(folder, tag)
    sampler = Sampler(interval)
    events: Events | None = None
    run = MemRun(n)

    try:
        sink = start_sink(procs, out, results_ep, events_ep)
        sampler.add("sink", sink.pid)
        events = Events(events_ep)
        for i, w in enumerate(start_workers(procs, workers, model, tiles_ep, results_ep,
                                            threads, 1.0, tag)):
            sampler.add(f"worker {i + 1}", w.pid)
        time.sleep(0.3)  # our subscription reaches the sink
        sampler.start()
        t_vent = time.monotonic()
        vent = procs.spawn("ventilator", [
            "ventilate", *inputs, "--model", model, "--bind", tiles_ep, "--sink-results",
            results_ep, "--sink-events", events_ep, "--no-progress", "--job", job_id,
            "--window", str(window)], False)
        sampler.add("ventilator", vent.pid)
        t_first: float | None = None
        t_exit: float | None = None
        t_done = float("inf")
        done = None
        last_note = t_vent
        limit = 300 + n / 20  # generous: a stuck job must not hang the benchmark
        while vent.poll() is None or done is None:
            now = time.monotonic()
            if now - t_vent > limit:
                raise RuntimeError(f"N={n}: not done after {limit:.0f} s")
            if vent.poll() is not None and t_exit is None:
                t_exit = now
            if t_exit is not None and done is None and now - t_exit > 5:
                raise RuntimeError(f"N={n}: ventilate exited with {vent.returncode} and no "
                                   f"JobDone (see {procs.log_of(vent)})")
            msg = events.next()
            if getattr(msg, "job", None) != job_id:
                pass
            elif isinstance(msg, protocol.Progress):
                if t_first is None and msg.tiles_done > 0:
                    t_first = time.monotonic()
                    run.first_tile = msg.elapsed
                    first_tiles = msg.tiles_done
                if time.monotonic() - last_note > 30:
                    last_note = time.monotonic()
                    log(f"  N={n:,}: {msg.images_done:,} images done, {msg.elapsed:.0f} s")
            elif isinstance(msg, protocol.JobDone):
                done = msg
                sampler.sample_once("ventilator")  # it exits on this message: its last peak
                t_done = time.monotonic()
        run.wall = time.monotonic() - t_vent
        if vent.returncode != 0:
            raise RuntimeError(f"N={n}: ventilate exited with {vent.returncode} "
                               f"(see {procs.log_of(vent)})")
        if t_first is None:
            t_first, first_tiles = t_vent + 2.0, 0
        # Peaks of the roles still running, read before they are stopped.
        for name, p, _ in procs.items:
            if p is vent:
                continue
            st = _status(p.pid)
            sampler.sample_once(name)
            run.roles.append(RoleMem(name, sampler.first_after(name, t_first),
                                     sampler.last(name), st.get("VmHWM", 0)))
        # Its end: the last sample before JobDone arrived (it then tears down, freeing).
        run.roles.append(RoleMem("ventilator", sampler.first_after("ventilator", t_first),
                                 sampler.last("ventilator", before=t_done),
                                 max((s.hwm for s in sampler.samples["ventilator"]),
                                     default=0)))
        run.series = {name: [x for x in ss if t_first <= x.t <= t_done]
                      for name, ss in sampler.samples.items()}
        run.images, run.tiles, run.seconds = done.images, done.tiles, done.seconds
        if done.seconds > run.first_tile:
            run.steady = (done.tiles - first_tiles) / (done.seconds - run.first_tile)
    finally:
        sampler.stop()
        if events is not None:
            events.close()
        procs.close()
    with open(out, "rb") as f:
        run.records = sum(1 for _ in f)
    return run


# ---------------------------------------------------------------------------- recovery


@dataclass
class Recovery:
    variant: str
    heartbeat: float
    rep: int = 0
    seconds: float = 0.0  # first tile sent → JobDone received
    tiles: int = 0
    images: int = 0
    kill_at_s: float | None = None  # after the first tile was sent
    kill_frac: float | None = None
    dead_after: float | None = None  # kill → declared dead (s)
    how: str = ""  # "heartbeat timeout" / "failed send"
    requeued: int = 0
    recovered_after: float | None = None  # kill → last requeued tile acknowledged (s)


class _DispatchProbe:
    """Wraps zmqvision.dispatch.Dispatcher methods (in this process only) to time events."""

    NAMES = ("expire", "lost", "_requeue", "done", "assign")

    def __init__(self) -> None:
        from zmqvision.dispatch import Dispatcher

        self.cls = Dispatcher
        self.orig = {k: getattr(Dispatcher, k) for k in self.NAMES}
        self.reset()

    def reset(self) -> None:
        self.first_sent: float | None = None
        self.dead: list[tuple[float, str, int]] = []  # (t, how, tiles requeued)
        self.requeued: dict = {}
        self.acked: dict = {}

    def install(self) -> None:
        probe, orig = self, self.orig

        def expire(d):
            before = d.requeued
            dead = orig["expire"](d)
            if dead:
                probe.dead.append((time.monotonic(), "heartbeat timeout", d.requeued - before))
            return dead

        def lost(d, wid):
            known = wid in d.workers
            before = d.requeued
            orig["lost"](d, wid)
            if known:
                probe.dead.append((time.monotonic(), "failed send", d.requeued - before))

        def _requeue(d, key):
            probe.requeued.setdefault(key, time.monotonic())
            orig["_requeue"](d, key)

        def done(d, key):
            if key in probe.requeued and key in d.leases:
                probe.acked.setdefault(key, time.monotonic())
            orig["done"](d, key)

        def assign(d, key, wid):
            if probe.first_sent is None:
                probe.first_sent = time.monotonic()
            orig["assign"](d, key, wid)

        for name, fn in zip(self.NAMES, (expire, lost, _requeue, done, assign), strict=True):
            setattr(self.cls, name, fn)

    def uninstall(self) -> None:
        for name, fn in self.orig.items():
            setattr(self.cls, name, fn)


def recovery_run(inputs: list[str], model: str, workers: int, heartbeat: float,
                 kill_at: float | None, expect_tiles: int, folder: Path,
                 probe: _DispatchProbe) -> Recovery:
    """One job: sink and workers as ``python -m zmqvision`` children, the ventilator in a
    thread of this process (so its dispatcher can be timed); maybe one worker SIGKILLed."""
    from zmqvision import sockets
    from zmqvision.ventilator import VentilateConfig, Ventilator

    variant = ("undisturbed" if kill_at is None
               else f"kill 1 of {workers}, heartbeat {heartbeat:g} s")
    rec = Recovery(variant, heartbeat)
    results_ep, events_ep = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    procs = Procs(folder, "recovery")
    stop = sockets.StopFlag()
    box: dict = {}
    vent = thread = None
    victim: list[subprocess.Popen] = []
    t_kill: float | None = None

    def on_progress(p) -> None:
        nonlocal t_kill
        if kill_at is None or t_kill is not None or not victim:
            return
        if p.tiles_done >= kill_at * expect_tiles:
            os.kill(victim[0].pid, signal.SIGKILL)
            t_kill = time.monotonic()
            rec.kill_frac = p.tiles_done / expect_tiles

    def target() -> None:
        try:
            box["done"] = vent.run(stop, on_progress)
        except BaseException as exc:  # reported by the caller
            box["error"] = exc
        box["t_end"] = time.monotonic()

    probe.reset()
    probe.install()
    try:
        start_sink(procs, folder / "recovery.jsonl", results_ep, events_ep)
        vent = Ventilator(VentilateConfig(inputs=tuple(inputs), model=model,
                                          tiles="tcp://127.0.0.1:0", sink=results_ep,
                                          events=events_ep, timeout=300))
        tiles_ep = vent.bind()
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while vent.sink_id is None and thread.is_alive():  # see memory_run: the ack race
            if time.monotonic() > deadline:
                raise RuntimeError("the ventilator did not hear the sink in 30 s")
            time.sleep(0.01)
        victim += start_workers(procs, workers, model, tiles_ep, results_ep, 1, heartbeat,
                                "rec")[:1]
        thread.join(400)
        if "error" in box:
            raise RuntimeError(f"recovery run failed: {box['error']}") from box["error"]
        if "done" not in box:
            raise RuntimeError("recovery run did not finish")
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)
        probe.uninstall()
        if vent is not None:
            vent.close()
        procs.close()
    done = box["done"]
    rec.seconds = box["t_end"] - probe.first_sent
    rec.tiles, rec.images = done.tiles, done.images
    if t_kill is not None:
        rec.kill_at_s = t_kill - probe.first_sent
        after = [d for d in probe.dead if d[0] >= t_kill]
        if after:
            rec.dead_after = after[0][0] - t_kill
            rec.how = after[0][1]
        rec.requeued = len(probe.requeued)
        if probe.acked:
            rec.recovered_after = max(probe.acked.values()) - t_kill
    return rec


# ---------------------------------------------------------------------------- tables



def mib(kb: float | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.1f}"


def memory_table(runs: list[MemRun]) -> str:
    body = []
    for run in runs:
        for rm in run.roles:
            start = rm.start.rss if rm.start else None
            growth = rm.peak_kb - start if start is not None else None
            anon = (rm.end.anon - rm.start.anon) if rm.start and rm.end else None
            per_k = f"{growth / (run.n / 1000):.0f}" if growth is not None else "?"
            cpu = f"{rm.end.cpu:.1f}" if rm.end else "?"
            body.append([f"{run.n:,}", rm.role, mib(start), mib(rm.end.rss if rm.end else None),
                         mib(rm.peak_kb), mib(growth), mib(anon), per_k, cpu])
    return markdown_table(["images", "role", "RSS start MiB", "RSS end MiB", "peak (VmHWM) MiB",
                           "growth MiB", "anon growth MiB", "growth KiB / 1k images",
                           "CPU s"], body)


def role_key(role: str) -> str:
    return role.split()[0]


def across_sizes(runs: list[MemRun]) -> str:
    """Per role: peak at the smallest and the largest N, and the slope per 1k images."""
    if len(runs) < 2:
        return ""
    small, big = runs[0], runs[-1]
    k = (big.n - small.n) / 1000
    body = []
    for role in ROLES:
        a = [r.peak_kb for r in small.roles if role_key(r.role) == role]
        b = [r.peak_kb for r in big.roles if role_key(r.role) == role]
        if not a or not b:
            continue
        pa, pb = max(a), max(b)
        body.append([role, mib(pa), mib(pb), mib(pb - pa), f"{(pb - pa) / k:.1f}"])
    return markdown_table(["role", f"peak at {small.n:,} MiB", f"peak at {big.n:,} MiB",
                           "difference MiB", "KiB per 1k images"], body)


def throughput_table(runs: list[MemRun]) -> str:
    body = [[f"{r.n:,}", f"{r.images:,}", f"{r.records:,}", f"{r.tiles:,}",
             f"{r.seconds:.1f}", f"{r.first_tile:.1f}", f"{r.steady:.0f}",
             f"{r.wall:.1f}"] for r in runs]
    return markdown_table(["images", "JobDone images", "records in out", "tiles", "JobDone s",
                           "1st tile at s", "tiles/s (1st tile → JobDone)",
                           "ventilate wall s"], body)


def series_table(run: MemRun, points: int = 5) -> str:
    """RSS of each role at evenly spaced moments from the first finished tile to JobDone."""
    body = []
    for name, ss in sorted(run.series.items(), key=lambda kv: (ROLES.index(role_key(kv[0])),
                                                                 kv[0])):
        if not ss:
            continue
        t0, t1 = ss[0].t, ss[-1].t
        row = [name]
        for k in range(points):
            t = t0 + (t1 - t0) * k / (points - 1)
            row.append(mib(min(ss, key=lambda x, t=t: abs(x.t - t)).rss))
        body.append(row)
    header = ["role", *(f"RSS at {100 * k // (points - 1)} % MiB" for k in range(points))]
    return markdown_table(header, body)


def recovery_table(recs: list[Recovery], repeats: int) -> str:
    variants: dict[str, list[Recovery]] = {}
    for r in recs:
        variants.setdefault(r.variant, []).append(r)
    base = {r.rep: r for r in variants.get("undisturbed", [])}
    body = []
    short = {"heartbeat timeout": "heartbeats", "failed send": "send failed"}
    for name, rs in variants.items():
        rs = sorted(rs, key=lambda r: r.rep)
        secs = [r.seconds for r in rs]
        diffs = [r.seconds - base[r.rep].seconds for r in rs if r.rep in base]
        row = [name, f"{statistics.median(secs):.2f}", f"{min(secs):.2f}–{max(secs):.2f}",
               f"{statistics.median(r.tiles / r.seconds for r in rs):.0f}"]
        if name == "undisturbed":
            row += ["–", "–", "–", "–", "–"]
        else:
            kills = [r for r in rs if r.kill_at_s is not None]

            def opt(v: float | None) -> str:
                return "–" if v is None else f"{v:.2f}"

            row += [
                f"{statistics.median(diffs):+.2f} ({', '.join(f'{d:+.2f}' for d in diffs)})",
                ", ".join(f"{r.kill_at_s:.1f} s/{100 * r.kill_frac:.0f} %" for r in kills),
                ", ".join(f"{opt(r.dead_after)} ({short.get(r.how, r.how or '?')})"
                          for r in kills),
                ", ".join(str(r.requeued) for r in kills),
                ", ".join(opt(r.recovered_after) for r in kills),
            ]
        body.append(row)
    return markdown_table(["variant", f"job s (median of {repeats})", "min–max", "tiles/s",
                           "Δ job s vs undisturbed: median (per repeat)",
                           "killed at (s after 1st tile / tiles done)",
                           "kill → declared dead s (how)", "tiles requeued",
                           "kill → last requeued tile acked s"], body)


def machine_facts() -> str:
    import openvino as ov

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.0f} GiB"
    return (f"machine: {cpu}, os.cpu_count()={os.cpu_count()} (usable {usable}), {mem} RAM, "
            f"OpenVINO {ov.__version__}, Python {platform.python_version()}, "
            f"{platform.platform()}")


# ---------------------------------------------------------------------------- main


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1000,10000, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1000,10000,100000"),
                    help="job sizes in images (default 1000,10000,100000)")
    ap.add_argument("--model", default="blazeface-short")
    ap.add_argument("--image-size", type=int, default=128,
                    help="generated images are SIZExSIZE (default 128: one blazeface tile)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="--threads of each worker")
    ap.add_argument("--interval", type=float, default=0.5, help="RSS sampling period, s")
    ap.add_argument("--window", type=int, default=256,
                    help="memory runs: ventilate --window (default 256, its default)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help=f"generated images, reused between runs (default {DEFAULT_CACHE})")
    ap.add_argument("--no-recovery", dest="recovery", action="store_false")
    ap.add_argument("--recovery-images", type=int, default=2000)
    ap.add_argument("--recovery-workers", type=int, default=3)
    ap.add_argument("--recovery-repeats", type=int, default=3)
    ap.add_argument("--heartbeats", default="1,0.5",
                    help="worker heartbeat periods of the kill variants (default 1,0.5)")
    ap.add_argument("--kill-at", type=float, default=0.3,
                    help="kill a worker at this fraction of the tiles done (default 0.3)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)

    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from zmqvision.models import ensure, resolve

    spec = resolve(args.model)
    ensure(spec, log=log)
    t_start = time.monotonic()
    load0 = os.getloadavg()
    lines = [
        "command: " + shlex.join(["benchmarks/memory.py", *(sys.argv[1:] if argv is None
                                                             else argv)]),
        machine_facts(),
        f"model: {spec.ref}, input {spec.input_size[0]}x{spec.input_size[1]}; "
        f"images {args.image_size}x{args.image_size} JPEG (1 tile each at this size); "
        f"memory runs: {args.workers} workers --threads {args.threads}, window {args.window}, "
        f"RSS sampled every {args.interval:g} s",
    ]
    need = max([*args.sizes, args.recovery_images if args.recovery else 0])
    root, gen_s = ensure_images(args.cache, need, args.image_size, log)
    made = f"generated in {gen_s:.0f} s" if gen_s > 1 else "cached"
    lines.append(f"images: {root} ({made})")

    runs: list[MemRun] = []
    with tempfile.TemporaryDirectory(prefix="zv-mem-") as tmp:
        folder = Path(tmp)
        for n in args.sizes:
            log(f"memory run N={n:,} ...")
            run = memory_run(job_inputs(root, n), n, args.model, args.workers, args.threads,
                             args.interval, folder, args.window, log)
            runs.append(run)
            log(f"  N={n:,}: {run.tiles} tiles in {run.seconds:.1f} s; " + ", ".join(
                f"{r.role} {mib(r.start.rss if r.start else None)}→{mib(r.peak_kb)} MiB"
                for r in run.roles))

        recs: list[Recovery] = []
        if args.recovery:
            heartbeats = [float(h) for h in args.heartbeats.split(",") if h.strip()]
            variants: list[tuple[float, float | None]] = [(1.0, None)]
            variants += [(hb, args.kill_at) for hb in heartbeats]
            inputs = job_inputs(root, args.recovery_images)
            probe = _DispatchProbe()
            log(f"recovery: {args.recovery_images} images, {args.recovery_workers} workers, "
                f"warm-up run ...")
            recovery_run(inputs, args.model, args.recovery_workers, 1.0, None,
                         args.recovery_images, folder, probe)
            for rep in range(args.recovery_repeats):
                order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                done = []
                for hb, kill in order:
                    r = recovery_run(inputs, args.model, args.recovery_workers, hb, kill,
                                     args.recovery_images, folder, probe)
                    r.rep = rep
                    recs.append(r)
                    done.append(f"{r.variant}={r.seconds:.2f}s"
                                + (f" dead+{r.dead_after:.2f}s" if r.dead_after else ""))
                log(f"repeat {rep + 1}/{args.recovery_repeats}: " + ", ".join(done))
                lines.append(f"recovery repeat {rep + 1}/{args.recovery_repeats}: "
                             + ", ".join(done))

    load1 = os.getloadavg()
    lines.append(f"load average (1 min) at start {load0[0]:.2f}, at end {load1[0]:.2f}; "
                 f"total {time.monotonic() - t_start:.0f} s")
    report = ["```", *lines, "```", "", "Memory per role (MiB = 2^20 bytes):", "",
              memory_table(runs), ""]
    sizes = across_sizes(runs)
    if sizes:
        report += ["Peak RSS across job sizes (worker: the larger of the workers):", "",
                   sizes, ""]
    if runs:
        report += [f"RSS during the {runs[-1].n:,}-image run (first finished tile → JobDone):",
                   "", series_table(runs[-1]), ""]
    report += ["Throughput of the memory runs:", "", throughput_table(runs), ""]
    if args.recovery:
        report += [f"Recovery from a SIGKILLed worker ({args.recovery_images} images, "
                   f"{args.recovery_workers} workers --threads 1; job s = first tile sent → "
                   f"JobDone received, at the ventilator):", "",
                   recovery_table(recs, args.recovery_repeats), ""]
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
