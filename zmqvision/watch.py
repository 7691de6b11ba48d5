"""`zmqvision watch`: a SUB socket on the sink's PUB, a state built only from events, and
three ways to show it (a live terminal view, JSON lines, one snapshot).

The state is a pure function of the events and the clock, so it is tested without a
terminal. Liveness is judged here, by the watcher's own clock: a worker is *late* once it
missed more than one and a half of its own heartbeat periods, *dead* after two and a half,
which makes a SIGKILLed worker show as dead less than three periods after it died. The
sink's once-a-second snapshots (Workers, Progress, SinkStatus) mean a watcher that joins
mid-job knows everything after one period; nothing here ever blocks the pipeline (PUB
drops for a slow watcher) or hangs on exit (linger 0).

Jobs are judged by the same clock. A job's total is known once its ventilator has walked
every input (its JobEnd): until then the images column says ``N/?`` and there is no ETA
(the ventilator's own bar counts its inputs ahead; the sink is not told that count). A job
whose counters have not moved for ``STALLED_S`` is *stalled* (no worker, a huge tile); for
``ABANDONED_S`` (past two of the ventilator's 120 s tile leases, after which it would have
sent again) it is *abandoned*: its ventilator died or gave up, and the sink, which cannot
tell, keeps reporting it. A finished job's rate is its final average (tiles over seconds,
the summary line's figure), not the last smoothed sample.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from zmqvision import protocol, security, sockets

WATCHED = (protocol.MsgType.HEARTBEAT, protocol.MsgType.PROGRESS, protocol.MsgType.JOB_DONE,
           protocol.MsgType.SINK_STATUS, protocol.MsgType.WORKERS, protocol.MsgType.FAILURE,
           protocol.MsgType.TRAIN_PROGRESS)  # zmqvision train --events (docs/train.md)
LATE_PERIODS = 1.5
DEAD_PERIODS = 2.5
SINK_SILENT_S = 3.0
FORGET_DEAD_S = 300.0
KEEP_DONE_JOBS = 5
STALLED_S = 30.0
ABANDONED_S = 300.0


@dataclass
class _Worker:
    beat: protocol.Heartbeat
    seen: float  # local monotonic time of the freshest news


@dataclass
class _Job:
    progress: protocol.Progress
    seen: float
    done: protocol.JobDone | None = None
    rate: float = 0.0  # tiles/s, smoothed
    image_rate: float = 0.0  # images/s, smoothed (a live job's rate: it has no total)
    _last: tuple[float, int] | None = None  # (elapsed, tiles_done) of the last rate sample
    _last_images: int = 0
    changed: float = 0.0  # local monotonic time its counters last moved

    @staticmethod
    def counters(p: protocol.Progress) -> tuple:
        return (p.images_seen, p.images_done, p.tiles_seen, p.tiles_done, p.images_total)

    def final_rate(self) -> float | None:
        """The finished job's average tiles/s (the summary line's); None while it runs."""
        if self.done is not None:
            d = self.done
            return d.tiles / d.seconds if d.seconds > 0 else 0.0
        p = self.progress
        if p.done:
            return p.tiles_done / p.elapsed if p.elapsed > 0 else 0.0
        return None


@dataclass
class WatchState:
    """Everything a watcher knows; ``ingest`` events, then read ``snapshot``."""

    clock: Callable[[], float] = time.monotonic
    workers: dict[str, _Worker] = field(default_factory=dict)
    jobs: dict[str, _Job] = field(default_factory=dict)
    failures: deque = field(default_factory=lambda: deque(maxlen=10))
    sink: protocol.SinkStatus | None = None
    sink_seen: float | None = None
    sink_wall: float | None = None  # wall-clock time the sink was last heard, for display
    events: int = 0
    training: protocol.TrainProgress | None = None  # the latest, from `zmqvision train`
    bad: sockets.BadMessages = field(default_factory=lambda: sockets.BadMessages("watch"))

    # ------------------------------------------------------------------ ingest

    def ingest_frames(self, frames) -> protocol.Message | None:
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            self.bad(exc)
            return None
        self.ingest(msg)
        return msg

    def ingest(self, msg: protocol.Message) -> None:
        now = self.clock()
        self.events += 1
        self.sink_seen = now  # every event comes through the sink's PUB
        self.sink_wall = time.time()
        if isinstance(msg, protocol.Heartbeat):
            self.workers[msg.worker] = _Worker(msg, now)
        elif isinstance(msg, protocol.Workers):
            for entry in msg.workers:
                seen = now - entry["age"]
                known = self.workers.get(entry["worker"])
                if known is None or known.seen < seen - 0.05:
                    beat = protocol.Heartbeat.parse(entry)
                    self.workers[entry["worker"]] = _Worker(beat, seen)
        elif isinstance(msg, protocol.Progress):
            self._on_progress(msg, now)
        elif isinstance(msg, protocol.JobDone):
            job = self.jobs.get(msg.job)
            if job is None:
                job = self.jobs[msg.job] = _Job(_progress_from_done(msg), now, changed=now)
            job.done = msg
            job.seen = now
        elif isinstance(msg, protocol.Failure):
            entry = {"job": msg.job, "image": msg.image, "path": msg.path, **msg.error}
            if entry not in self.failures:
                self.failures.append(entry)
        elif isinstance(msg, protocol.SinkStatus):
            self.sink = msg
        elif isinstance(msg, protocol.TrainProgress):
            self.training = msg
        self._forget(now)

    def _on_progress(self, p: protocol.Progress, now: float) -> None:
        job = self.jobs.get(p.job)
        if job is None:
            job = self.jobs[p.job] = _Job(p, now, changed=now)
        elif _Job.counters(p) != _Job.counters(job.progress):
            job.changed = now
        if job._last is not None and p.elapsed > job._last[0] + 0.2:
            inst = (p.tiles_done - job._last[1]) / (p.elapsed - job._last[0])
            job.rate = inst if job.rate == 0 else 0.6 * job.rate + 0.4 * inst
            inst = (p.images_done - job._last_images) / (p.elapsed - job._last[0])
            job.image_rate = inst if job.image_rate == 0 else 0.6 * job.image_rate + 0.4 * inst
            job._last, job._last_images = (p.elapsed, p.tiles_done), p.images_done
        elif job._last is None:
            job._last, job._last_images = (p.elapsed, p.tiles_done), p.images_done
            if p.elapsed > 0.5:  # joined mid-job: the average so far until samples come
                job.rate = p.tiles_done / p.elapsed
                job.image_rate = p.images_done / p.elapsed
        job.progress = p
        job.seen = now
        for f in p.failures:
            entry = {"job": p.job, **f}
            if entry not in self.failures:
                self.failures.append(entry)

    def _forget(self, now: float) -> None:
        for wid in [w for w, v in self.workers.items() if now - v.seen > FORGET_DEAD_S]:
            del self.workers[wid]
        done = sorted((j.seen, jid) for jid, j in self.jobs.items() if j.done is not None)
        for _, jid in done[:-KEEP_DONE_JOBS]:
            del self.jobs[jid]

    # ------------------------------------------------------------------ read

    def worker_state(self, w: _Worker, now: float | None = None) -> str:
        age = (now if now is not None else self.clock()) - w.seen
        period = w.beat.period or 1.0
        if age > DEAD_PERIODS * period:
            return "dead"
        if age > LATE_PERIODS * period:
            return "late"
        return "alive"

    def job_state(self, j: _Job, now: float | None = None) -> str:
        """complete, running, stalled (no counter moved for STALLED_S) or abandoned."""
        if j.done is not None or j.progress.done:
            return "complete"
        if j.progress.live and not j.progress.backlog:
            return "waiting"  # a live job with nothing to do: its inputs have not come
        idle = (now if now is not None else self.clock()) - j.changed
        if idle > ABANDONED_S:
            return "abandoned"
        return "stalled" if idle > STALLED_S else "running"

    def sink_state(self, now: float | None = None) -> str:
        if self.sink_seen is None:
            return "unheard"
        now = now if now is not None else self.clock()
        return "silent" if now - self.sink_seen > SINK_SILENT_S else "reachable"

    def snapshot(self) -> dict:
        """The whole state as plain data (what `--once --json` prints)."""
        now = self.clock()
        workers = []
        for wid, w in sorted(self.workers.items()):
            b = w.beat
            workers.append({
                "worker": wid, "host": b.host, "pid": b.pid, "device": b.device,
                "model": b.model, "state": self.worker_state(w, now),
                "tiles_done": b.tiles_done, "tiles_failed": b.tiles_failed,
                "tiles_per_s": round(b.tiles_per_s, 2), "in_flight": b.in_flight,
                "requests": b.requests, "queue": b.queue, "uptime": round(b.uptime, 1),
                "last_seen": round(now - w.seen, 2), "period": b.period,
                "refused": b.refused,
            })
        jobs = []
        for jid, j in self.jobs.items():
            p = j.progress
            state = self.job_state(j, now)
            final = j.final_rate()
            entry = {
                "job": jid, "images_seen": p.images_seen, "images_done": p.images_done,
                "images_failed": p.images_failed, "images_total": p.images_total,
                "images_cached": p.images_cached,
                "tiles_seen": p.tiles_seen, "tiles_done": p.tiles_done,
                "tiles_total": p.tiles_total, "detections": p.detections,
                "elapsed": round(p.elapsed, 2),
                "tiles_per_s": round(final if final is not None else j.rate, 2),
                "eta": _eta(j) if state in ("running", "complete") else None,
                "done": j.done is not None or p.done, "state": state,
                "idle": round(now - j.changed, 1),
            }
            if p.stage2 is not None:  # a two-stage job: its second stage's progress
                entry.update(stage2=p.stage2, objects_seen=p.objects_seen,
                             objects_done=p.objects_done)
            if p.live:  # no total: a rate and how far behind it is instead
                entry.update(live=True, lag=p.lag, backlog=p.backlog, dropped=p.dropped,
                             images_per_s=round(j.image_rate, 2))
            if j.done is not None:
                entry["summary"] = j.done.header()
            jobs.append(entry)
        sink = {"state": self.sink_state(now),
                "silent_for": None if self.sink_seen is None else round(now - self.sink_seen, 1),
                "last_heard": self.sink_wall}
        if self.sink is not None:
            sink.update({"sink": self.sink.sink, "host": self.sink.host, "pid": self.sink.pid,
                         "uptime": round(self.sink.uptime, 1),
                         "bad_messages": self.sink.bad_messages})
        out = {"sink": sink, "workers": workers, "jobs": jobs,
               "failures": list(self.failures), "bad_messages": self.bad.count}
        if self.training is not None:
            out["training"] = self.training.header()
        return out


def _progress_from_done(d: protocol.JobDone) -> protocol.Progress:
    return protocol.Progress(job=d.job, images_seen=d.images, images_done=d.images,
                             images_failed=d.failed, tiles_seen=d.tiles, tiles_done=d.tiles,
                             images_total=d.images, tiles_total=d.tiles, elapsed=d.seconds,
                             done=True, detections=d.detections, images_cached=d.cached)


def _eta(job: _Job) -> float | None:
    p = job.progress
    if job.done is not None or p.done:
        return 0.0
    if job.rate <= 0 or p.images_total is None or p.tiles_total is None:
        return None  # still walking inputs: the work left is not known
    return round(max(0, p.tiles_total - p.tiles_done) / job.rate, 1)


# ---------------------------------------------------------------------------- rendering


WIDE = 150  # below this many columns, the tables leave out what matters least


def render(state: WatchState, endpoint: str, width: int = WIDE):
    """A rich renderable of the state (sink line, workers table, jobs, failures), with fewer
    columns on a narrow terminal rather than every column truncated to nothing."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    from zmqvision.console import stage2_text

    snap = state.snapshot()
    s = snap["sink"]
    if s["state"] == "unheard":
        head = Text(f"sink {endpoint}: waiting to hear from it…", style="yellow")
    elif s["state"] == "silent":
        since = time.strftime("%H:%M:%S", time.localtime(s["last_heard"]))
        head = Text(f"sink {endpoint}: SILENT since {since} ({s['silent_for']:.0f} s)",
                    style="bold red")
    else:
        head = Text(f"sink {endpoint}: reachable · {s.get('host', '?')} pid {s.get('pid', '?')}"
                    f" · up {s.get('uptime', 0):.0f} s · bad messages {s.get('bad_messages', 0)}",
                    style="green")

    wide = width >= WIDE
    models = sorted({w["model"] for w in snap["workers"]})
    workers = Table(title="workers", title_justify="left", expand=False,
                    caption=None if wide or not models else "model: " + ", ".join(models),
                    caption_justify="left")
    cols = ["worker", "host", "pid", "device", "model", "state", "tiles", "tiles/s",
            "in flight", "queue", "uptime", "last seen"]
    if not wide:
        cols = [c for c in cols if c not in ("host", "pid", "model", "queue", "uptime")]
    for col in cols:
        workers.add_column(col, no_wrap=True)
    colours = {"alive": "green", "late": "yellow", "dead": "red"}
    for w in snap["workers"]:
        cells = {
            "worker": w["worker"], "host": w["host"], "pid": str(w["pid"]),
            "device": w["device"], "model": w["model"],
            "state": Text(w["state"], style=colours[w["state"]]),
            "tiles": f"{w['tiles_done']}"
            + (f" ({w['tiles_failed']} failed)" if w["tiles_failed"] else "")
            + (f" ({w['refused']} refused)" if w.get("refused") else ""),
            "tiles/s": f"{w['tiles_per_s']:.1f}",
            "in flight": f"{w['in_flight']}/{w['requests']}", "queue": str(w["queue"]),
            "uptime": _dur(w["uptime"]), "last seen": f"{w['last_seen']:.1f}s ago",
        }
        workers.add_row(*(cells[c] for c in cols))

    jobs = Table(title="jobs", title_justify="left", expand=False)
    for col in ("job", "progress", "images", "tiles", "failed", "rate", "ETA", "state"):
        jobs.add_column(col, no_wrap=True)
    for j in snap["jobs"]:
        total = j["images_total"]  # None: still walking inputs, the bar pulses
        bar = ProgressBar(total=None if total is None else max(total, 1),
                          completed=j["images_done"], width=30 if wide else 12)
        images = f"{j['images_done']}/{j['images_total'] if j['images_total'] is not None else '?'}"
        if j.get("live") and not j["done"]:
            images = f"{j['images_done']} live" + (f", {j['dropped']} dropped"
                                                   if j["dropped"] else "")
        if j["images_cached"]:
            images += f" ({j['images_cached']} cached)"
        tiles = f"{j['tiles_done']}/{j['tiles_total'] if j['tiles_total'] is not None else '?'}"
        stage = stage2_text(j.get("stage2"), j.get("objects_seen", 0), j.get("objects_done", 0))
        if stage:  # a two-stage job: "faces 12/15" under its tiles
            tiles += f", {stage}"
        if j["done"]:
            summ = j.get("summary") or {}
            state_txt = Text(f"complete in {summ.get('seconds', j['elapsed']):.1f}s",
                             style="green")
        elif j["state"] == "abandoned":
            state_txt = Text(f"abandoned (no progress for {_dur(j['idle'])})", style="red")
        elif j["state"] == "stalled":
            state_txt = Text(f"stalled (no progress for {_dur(j['idle'])})", style="yellow")
        else:
            state_txt = Text("running", style="cyan")
        eta = "-" if j["eta"] is None else _dur(j["eta"])
        rate = f"{j['tiles_per_s']:.1f}/s"
        if j.get("live") and not j["done"]:
            eta = f"lag {j['lag'] or 0:.1f}s"  # the age of the oldest input not yet done
            rate = f"{j['images_per_s']:.1f} img/s"
            if j["state"] == "waiting":
                state_txt = Text("waiting for inputs", style="cyan")
        jobs.add_row(j["job"][:8], bar, images, tiles, str(j["images_failed"]),
                     rate, eta, state_txt)

    parts = [head, workers, jobs]
    t = snap.get("training")
    if t is not None:
        val = t.get("val_accuracy")
        parts.append(Text(f"training: epoch {t['epoch']}/{t['epochs']} · step {t['step']}/"
                          f"{t['steps']} · loss {t['loss']:.4f} · workers {t['workers']}"
                          + (f" · val accuracy {val:.3f}" if val is not None else "")))
    if snap["failures"]:
        fails = Table(title="last failures", title_justify="left", expand=False)
        fails.add_column("image")
        fails.add_column("error", no_wrap=True)
        fails.add_column("message")
        for f in list(snap["failures"])[-5:]:
            fails.add_row(f["path"], f["type"], f["message"][: 100 if wide else 40])
        parts.append(fails)
    return Group(*parts)


def _dur(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ---------------------------------------------------------------------------- the loop


def event_json(msg: protocol.Message) -> str:
    """One event as a JSON line: its type tag plus its header fields."""
    header = msg.header() if not isinstance(msg, (protocol.Tile, protocol.Result)) else {}
    return json.dumps({"type": msg.TYPE.value, **header}, default=str)


def watch(
    endpoint: str,
    *,
    mode: str = "live",  # "live", "json" or "once"
    as_json: bool = False,  # with "once": print the snapshot as JSON
    timeout: float = 5.0,  # "once": how long to wait to hear the sink
    stop: sockets.StopFlag | None = None,
    out=None,
    curve: str | None = None,  # key directory: connect as a CURVE client (security.py)
) -> int:
    """Watch until stopped (live, json) or for one snapshot (once). Returns an exit code."""
    stop = stop or sockets.StopFlag()
    out = out or sys.stdout
    state = WatchState()
    ctx = zmq.Context()
    sub = sockets.make_socket(ctx, zmq.SUB, rcvhwm=10_000, linger=0)
    for topic in WATCHED:
        sub.setsockopt(zmq.SUBSCRIBE, topic.tag)
    try:
        secured = security.secure(ctx, curve, clients=(sub,))
    except security.CurveKeyError:
        sub.close(linger=0)
        ctx.term()
        raise
    sub.connect(endpoint)

    def pump(wait_ms: int) -> list:
        got = []
        if sub.poll(wait_ms, zmq.POLLIN):
            for _ in range(1000):
                try:
                    frames = sub.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = state.ingest_frames(frames)
                if msg is not None:
                    got.append(msg)
        return got

    try:
        if mode == "json":
            while not stop.is_set():
                for msg in pump(200):
                    out.write(event_json(msg) + "\n")
                out.flush()
            return 0
        if mode == "once":
            deadline = time.monotonic() + timeout
            heard_status = heard_roster = False
            while not stop.is_set() and time.monotonic() < deadline:
                for msg in pump(100):
                    heard_status |= isinstance(msg, protocol.SinkStatus)
                    heard_roster |= isinstance(msg, protocol.Workers)
                if heard_status and heard_roster:
                    pump(50)  # the rest of this snapshot burst (progress of every job)
                    break
            if state.sink_seen is None:
                print(f"zmqvision watch: nothing heard from {endpoint} in {timeout:.0f} s",
                      file=sys.stderr)
                return 1
            if as_json:
                out.write(json.dumps(state.snapshot()) + "\n")
            else:
                from rich.console import Console

                console = Console(file=out, width=WIDE + 10)
                console.print(render(state, endpoint, console.width))
            return 0
        from rich.console import Console
        from rich.live import Live

        console = Console(file=out)
        with Live(render(state, endpoint, console.width), console=console,
                  refresh_per_second=4, transient=False) as live:
            next_draw = 0.0
            while not stop.is_set():
                pump(100)
                now = time.monotonic()
                if now >= next_draw:
                    live.update(render(state, endpoint, console.width))
                    next_draw = now + 0.25
        return 0
    finally:
        if secured is not None:
            secured.close()
        sub.close(linger=0)
        ctx.term()
