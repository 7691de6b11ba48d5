"""Pipeline throughput with 0 watchers, N watchers and one stopped watcher, side by side.

Watchers subscribe to the sink's PUB socket; they must cost the pipeline nothing, even when
one of them stops reading. Every variant is one ``zmqvision.run.run_job`` (what
``zmqvision run DIR`` runs: a sink and worker child processes, real sockets), the sink's
events on a fixed free port, and around it real ``python -m zmqvision watch`` processes:

- ``none``: no watcher;
- ``json``: ``--watchers`` (5) ``zmqvision watch --connect tcp://127.0.0.1:PORT --json``,
  each writing its events to a file (they read and decode every event);
- ``stopped``: the same, plus one more ``--json`` watcher that is SIGSTOPped as soon as it
  has received its first event (so its subscription is in place and the sink keeps queueing
  events for it), SIGCONTed and stopped after the job;
- ``live``: one live view (``zmqvision watch --connect …`` without ``--json``) on a
  pseudo-terminal, 120x40, so that rich really draws it 4 times a second (to a plain file
  rich only builds the view, and draws it once, at exit);
- ``none2``: a second run with no watcher (``--no-control`` skips it).

Watchers start before the job and are left to finish importing (until their CPU time
settles) before ``run_job`` is called. Per run: tiles / ``JobDone.seconds`` (the clock
starts once every worker has announced it is ready), and the sink's peak RSS (``VmHWM`` of
the ``zmqvision sink`` child, read from /proc every 50 ms while it runs) and CPU time.
Every variant runs once per repeat, the order rotated each repeat. The reference of a
repeat is the mean of its two no-watcher runs; the table shows medians and the median of
the per-repeat ratios to that reference; ``none2 ÷ none`` per repeat shows what noise alone
does to a ratio. The bar: every watcher variant's ratio ≥ 0.97.

    python benchmarks/watchers.py                  # ssd-mobilenetv2-oid, 1 worker, 5 repeats
    python benchmarks/watchers.py --repeats 9 --images 16
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import pty
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import cpu_seconds, free_port

BAR = 0.97


def _load_throughput():
    """benchmarks/throughput.py as a module (benchmarks/ is not a package)."""
    path = Path(__file__).with_name("throughput.py")
    spec = importlib.util.spec_from_file_location("zv_bench_throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tp = _load_throughput()

# ---------------------------------------------------------------------------- /proc



def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None  # gone, or a zombie (no Vm* lines)


def _find_pid(*needles: str) -> int | None:
    """The process whose argv holds every one of ``needles`` as an argument."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = {a.decode(errors="replace") for a in argv}
        if all(n in args for n in needles):
            return int(entry.name)
    return None


# ---------------------------------------------------------------------------- watchers


class Watcher:
    """One ``python -m zmqvision watch`` child: ``--json`` to a file, or live on a pty."""

    def __init__(self, endpoint: str, folder: Path, name: str, live: bool = False) -> None:
        self.name = name
        self.live = live
        self.path = folder / f"{name}.out"
        cmd = [sys.executable, "-m", "zmqvision", "watch", "--connect", endpoint]
        self.master: int | None = None
        self.pty_bytes = 0
        self._drain: threading.Thread | None = None
        self.stopped_at: float | None = None  # monotonic time of SIGSTOP
        self.lines_at_stop: int | None = None
        self.cpu0: float | None = None  # CPU seconds once settled (start-up done) ...
        self.t0: float | None = None  # ... at this monotonic time
        self.cpu: float | None = None  # CPU seconds when told to stop ...
        self.t1: float | None = None  # ... at this time
        if live:
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
            try:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave,
                                             stderr=slave, env=env)
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            self.master = master
            self._drain = threading.Thread(target=self._drain_pty, daemon=True)
            self._drain.start()
        else:
            with open(self.path, "wb") as out:
                self.proc = subprocess.Popen([*cmd, "--json"], stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.DEVNULL)

    def _drain_pty(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO once the child closed its side
                return
            if not data:
                return
            self.pty_bytes += len(data)

    def lines(self) -> int:
        try:
            with open(self.path, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def has_output(self) -> bool:
        if self.live:
            return self.pty_bytes > 0
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def sigstop(self) -> None:
        self.lines_at_stop = self.lines()
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped_at = time.monotonic()


def _start_watchers(endpoint: str, folder: Path, n_json: int, n_stopped: int, live: bool,
                    into: list[Watcher]) -> None:
    for i in range(n_json):
        into.append(Watcher(endpoint, folder, f"json{i}"))
    for i in range(n_stopped):
        into.append(Watcher(endpoint, folder, f"stopped{i}"))
    if live:
        into.append(Watcher(endpoint, folder, "live", live=True))


def _settle(watchers: list[Watcher], timeout: float = 30.0) -> float:
    """Wait until the watchers are done importing: together < 5 % of a core for 0.5 s."""
    t0 = time.monotonic()
    if not watchers:
        return 0.0
    time.sleep(0.5)
    last = sum(cpu_seconds(w.proc.pid) or 0.0 for w in watchers)
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        for w in watchers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"watcher {w.name} exited with {w.proc.returncode}")
        now = sum(cpu_seconds(w.proc.pid) or 0.0 for w in watchers)
        if now - last < 0.025:
            break
        last = now
    for w in watchers:
        w.cpu0, w.t0 = cpu_seconds(w.proc.pid), time.monotonic()
    return time.monotonic() - t0


def _stop_watchers(watchers: list[Watcher], grace: float = 5.0) -> None:
    """SIGCONT the stopped ones (a stopped process cannot act on SIGTERM), then SIGTERM all,
    then SIGKILL whatever is left after ``grace``."""
    for w in watchers:
        w.cpu, w.t1 = cpu_seconds(w.proc.pid), time.monotonic()
        if w.stopped_at is not None and w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.proc.pid, signal.SIGCONT)
    if any(w.stopped_at is not None for w in watchers):
        time.sleep(0.5)  # let the resumed one drain what reached it (counted below)
    for w in watchers:
        if w.proc.poll() is None:
            w.proc.terminate()
    deadline = time.monotonic() + grace
    for w in watchers:
        try:
            w.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(5)
    for w in watchers:
        if w._drain is not None:
            w._drain.join(2)
        if w.master is not None:
            os.close(w.master)
            w.master = None


# ---------------------------------------------------------------------------- one run


class _Monitor(threading.Thread):
    """Finds the sink child by its unique ``--out``, samples its VmHWM and CPU time, and
    SIGSTOPs the watchers to stop once they have received an event."""

    def __init__(self, out_path: str, to_stop: list[Watcher]) -> None:
        super().__init__(daemon=True)
        self.out_path = out_path
        self.to_stop = list(to_stop)
        self.sink_pid: int | None = None
        self.hwm_kb: int | None = None
        self.sink_cpu: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            for w in list(self.to_stop):
                if w.has_output():
                    w.sigstop()
                    self.to_stop.remove(w)
            self._halt.wait(0.05)

    def sample(self) -> None:
        if self.sink_pid is None:
            self.sink_pid = _find_pid("sink", "--out", self.out_path)
            if self.sink_pid is None:
                return
        hwm = _status_kb(self.sink_pid, "VmHWM")
        if hwm is not None:
            self.hwm_kb = hwm  # monotonic: the last reading is the peak so far
            cpu = cpu_seconds(self.sink_pid)
            if cpu is not None:
                self.sink_cpu = cpu

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass(frozen=True)
class Variant:
    key: str
    what: str
    json_watchers: int = 0
    stopped: int = 0
    live: bool = False


def one_run(folder: Path, model: str, workers: int, overlap: float, variant: Variant) -> dict:
    from zmqvision.merge import MergeConfig
    from zmqvision.run import RunPlan, run_job
    from zmqvision.sink import SinkConfig
    from zmqvision.ventilator import VentilateConfig
    from zmqvision.worker import WorkerConfig

    with tempfile.TemporaryDirectory(prefix="zv-bench-watch-") as tmp:
        tmp_path = Path(tmp)
        out_path = str(tmp_path / "results.jsonl")
        port = free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        plan = RunPlan(
            job=VentilateConfig(inputs=(str(folder),), model=model, overlap=overlap,
                                merge=MergeConfig()),
            # No fallback: if the port were taken the run fails instead of publishing
            # where no watcher listens.
            sink=SinkConfig(out=out_path, events=f"tcp://127.0.0.1:{port}"),
            worker=WorkerConfig(model=model),
            workers=workers,
        )
        watchers: list[Watcher] = []
        monitor: _Monitor | None = None
        first_progress: list[float] = []
        try:
            _start_watchers(endpoint, tmp_path, variant.json_watchers, variant.stopped,
                            variant.live, watchers)
            settle_s = _settle(watchers)
            monitor = _Monitor(out_path, [w for w in watchers if w.name.startswith("stopped")])
            monitor.start()
            t0 = time.monotonic()

            def on_progress(p) -> None:
                if not first_progress:
                    first_progress.append(time.monotonic())

            done = run_job(plan, on_progress=on_progress)
            wall = time.monotonic() - t0
        finally:
            if monitor is not None:
                monitor.stop()
            _stop_watchers(watchers)
        json_lines = [w.lines() for w in watchers if w.name.startswith("json")]
        stopped = [w for w in watchers if w.name.startswith("stopped")]
        live = [w for w in watchers if w.live]
        out = {
            "variant": variant.key, "tiles": done.tiles, "failed": done.failed,
            "job_seconds": done.seconds, "wall_seconds": wall,
            "rate": done.tiles / done.seconds, "settle_s": settle_s,
            "sink_pid": monitor.sink_pid, "sink_hwm_kb": monitor.hwm_kb,
            "sink_cpu_s": monitor.sink_cpu,
            "watcher_events": json_lines,
            # CPU the watchers used from the end of their start-up to the end of the job
            "watcher_cpu_s": [None if w.cpu is None or w.cpu0 is None else w.cpu - w.cpu0
                              for w in watchers],
            # ... as a share of the machine (all cores) over that window
            "watcher_cpu_share": (
                sum(w.cpu - w.cpu0 for w in watchers) / ((watchers[0].t1 - watchers[0].t0)
                                                          * (os.cpu_count() or 1))
                if watchers and all(w.cpu is not None and w.cpu0 is not None
                                    for w in watchers) else None),
        }
        for w in stopped:
            out.setdefault("stopped", []).append({
                "stopped_after_s": (None if w.stopped_at is None else w.stopped_at - t0),
                "first_progress_after_s": (first_progress[0] - t0) if first_progress else None,
                "events_before_stop": w.lines_at_stop, "events_in_all": w.lines(),
            })
        for w in live:
            out["live_bytes"] = w.pty_bytes
        return out


# ---------------------------------------------------------------------------- table


@dataclass
class Row:
    variant: Variant
    runs: list[dict] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    hwm_ratios: list[float] = field(default_factory=list)

    def _med(self, key: str) -> float | None:
        vals = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def note(self) -> str:
        parts = []
        cpu = self._med("sink_cpu_s")
        if cpu is not None:
            parts.append(f"sink CPU {cpu:.2f} s")
        events = [statistics.median(r["watcher_events"]) for r in self.runs
                  if r["watcher_events"]]
        if events:
            parts.append(f"{statistics.median(events):.0f} events/watcher")
        wcpu = [sum(c for c in r["watcher_cpu_s"] if c is not None) for r in self.runs
                if r["watcher_cpu_s"]]
        share = self._med("watcher_cpu_share")
        if wcpu:
            parts.append(f"watchers' CPU during the run {statistics.median(wcpu):.2f} s "
                         f"in all = {100 * share:.1f} % of the machine")
        st = [s for r in self.runs for s in r.get("stopped", [])]
        if st:
            after = [s["stopped_after_s"] for s in st if s["stopped_after_s"] is not None]
            before = [s["events_before_stop"] for s in st if s["events_before_stop"] is not None]
            drained = [s["events_in_all"] - (s["events_before_stop"] or 0) for s in st]
            if after:
                parts.append(f"SIGSTOP {statistics.median(after):.1f} s into run_job after "
                             f"{statistics.median(before):.0f} event(s); "
                             f"{statistics.median(drained):.0f} queued events read after "
                             "SIGCONT")
            else:
                parts.append("stopped watcher got no event: never stopped")
        live = [r["live_bytes"] for r in self.runs if "live_bytes" in r]
        if live:
            parts.append(f"live view drew {statistics.median(live) / 1024:.0f} KiB")
        return "; ".join(parts)


def render(rows: list[Row]) -> str:
    header = ["variant", "tiles/s (median)", "min–max", "÷ no watcher", "sink VmHWM MiB",
              "÷ no watcher", "job s", "notes"]
    body = []
    for row in rows:
        rates = [r["rate"] for r in row.runs]
        hwm = row._med("sink_hwm_kb")
        body.append([
            row.variant.what,
            f"{statistics.median(rates):.1f}",
            f"{min(rates):.1f}–{max(rates):.1f}",
            f"{statistics.median(row.ratios):.3f}",
            "-" if hwm is None else f"{hwm / 1024:.1f}",
            f"{statistics.median(row.hwm_ratios):.3f}" if row.hwm_ratios else "-",
            f"{row._med('job_seconds'):.1f}",
            row.note(),
        ])
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)])


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ssd-mobilenetv2-oid",
                    help="catalog model (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="runs of every variant (default 5)")
    ap.add_argument("--images", type=int, default=8, help="generated images (default 8)")
    ap.add_argument("--size", type=tp.parse_size, default=(1920, 1080),
                    help="generated image size WxH (default 1920x1080)")
    ap.add_argument("--workers", type=int, default=1,
                    help="workers of zmqvision run (default 1: all cores, THROUGHPUT hint)")
    ap.add_argument("--watchers", type=int, default=5,
                    help="--json watchers in the json variants (default 5)")
    ap.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default 0.2)")
    ap.add_argument("--no-live", action="store_true", help="skip the live-view variant")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the second no-watcher run (the noise control)")
    ap.add_argument("--out", help="also write the table: .md (markdown) or .json")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.images < 1 or args.workers < 1 or args.watchers < 0:
        ap.error("--repeats, --images and --workers must be >= 1, --watchers >= 0")

    import zmqvision
    from zmqvision.models import ensure, resolve

    spec = resolve(args.model)
    model_path = Path(ensure(spec, log=lambda m: print(m, file=sys.stderr)))
    facts = tp.machine_facts()
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    n = args.watchers
    variants = [
        Variant("none", "no watcher"),
        Variant("json", f"{n} --json watchers", json_watchers=n),
        Variant("stopped", f"{n} --json + 1 SIGSTOPped", json_watchers=n, stopped=1),
    ]
    if not args.no_live:
        variants.append(Variant("live", "1 live view (pty)", live=True))
    if not args.no_control:
        variants.append(Variant("none2", "no watcher (again: noise)"))
    rows = {v.key: Row(v) for v in variants}
    reference = [k for k in ("none", "none2") if k in rows]
    noise: list[float] = []

    with tempfile.TemporaryDirectory(prefix="zv-bench-in-") as tmp:
        folder = Path(tmp)
        paths = [str(p) for p in tp.make_inputs(folder, args.images, args.size)]
        n_tiles = tp._tiles_of(paths, spec.input_size, args.overlap)
        head = [
            f"command: {command}",
            f"machine: {facts['cpu']}, os.cpu_count()={facts['cpu_count']} "
            f"(usable {facts['usable_cpus']}), OpenVINO {facts['openvino']}, "
            f"Python {facts['python']}, {facts['platform']}",
            f"model: {spec.ref} ({model_path.name}), input {spec.input_size[0]}x"
            f"{spec.input_size[1]}; {args.workers} worker(s); {args.images} images "
            f"{args.size[0]}x{args.size[1]}, overlap {args.overlap} -> {n_tiles} tiles per "
            f"run; {args.repeats} repeats",
            f"zmqvision: {Path(zmqvision.__file__).parent}",
        ]
        print("\n".join(head), flush=True)

        # Warm-up, not timed: OpenVINO's blob cache, Python's bytecode caches.
        one_run(folder, args.model, args.workers, args.overlap, variants[0])

        raw: list[list[dict]] = []
        t_repeat = time.monotonic()
        for r in range(args.repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            got = {}
            for v in order:
                got[v.key] = one_run(folder, args.model, args.workers, args.overlap, v)
            # The reference of this repeat: the mean of its no-watcher runs.
            base_rate = statistics.fmean(got[k]["rate"] for k in reference)
            hwms = [got[k]["sink_hwm_kb"] for k in reference if got[k]["sink_hwm_kb"]]
            base_hwm = statistics.fmean(hwms) if hwms else None
            if "none2" in got:
                noise.append(got["none2"]["rate"] / got["none"]["rate"])
            for v in variants:
                run = got[v.key]
                rows[v.key].runs.append(run)
                rows[v.key].ratios.append(run["rate"] / base_rate)
                if run["sink_hwm_kb"] and base_hwm:
                    rows[v.key].hwm_ratios.append(run["sink_hwm_kb"] / base_hwm)
            raw.append([got[v.key] for v in order])
            summary = ", ".join(
                f"{k}={got[k]['rate']:.1f}/s "
                f"{(got[k]['sink_hwm_kb'] or 0) / 1024:.0f}MiB" for k in (v.key for v in order))
            print(f"repeat {r + 1}/{args.repeats}: {summary}", file=sys.stderr, flush=True)
            if r == 0 and args.repeats > 1:
                left = (time.monotonic() - t_repeat) * (args.repeats - 1)
                print(f"about {left / 60:.1f} min to go", file=sys.stderr, flush=True)

    table_rows = [rows[v.key] for v in variants]
    table = render(table_rows)
    checked = [v for v in variants if v.key not in ("none", "none2")]
    worst = min(statistics.median(rows[v.key].ratios) for v in checked) if checked else 1.0
    verdict = (f"throughput ÷ no watcher (median of {args.repeats} per-repeat ratios; "
               f"reference: {' and '.join(reference)}): "
               + "; ".join(f"{v.what} {statistics.median(rows[v.key].ratios):.3f}"
                           for v in checked)
               + f" (bar ≥ {BAR}: {'met' if worst >= BAR else 'NOT met'})")
    if not args.no_control:
        verdict += (f"; noise: 2nd ÷ 1st no-watcher run of a repeat, median "
                    f"{statistics.median(noise):.3f}, range {min(noise):.3f}–{max(noise):.3f}")
    shares = {v.what: [r["watcher_cpu_share"] for r in rows[v.key].runs
                       if r.get("watcher_cpu_share") is not None] for v in checked}
    if any(shares.values()):
        verdict += ("\nwatchers' CPU as a share of all cores while a run lasts (max over "
                    "repeats; what they can take from CPU-bound inference): "
                    + "; ".join(f"{k} {100 * max(v):.1f} %" for k, v in shares.items() if v))
    print()
    print(table)
    print()
    print(verdict)
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() == ".json":
            out.write_text(json.dumps({"head": head, "facts": facts, "verdict": verdict,
                                       "raw": raw}, indent=2, default=str))
        else:
            out.write_text("```\n" + "\n".join(head) + "\n```\n\n" + table + "\n\n"
                           + verdict + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
