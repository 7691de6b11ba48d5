"""What a person sees: the progress bar (drawn from the sink's Progress events, the same
ones ``watch`` shows, with its total from a count of the inputs), the notices printed
above it, and the end-of-job summary (which images failed and why, what to run next).

The bar's total is never a guess: inputs are walked lazily, so until ``io.InputCounter``
(a walk that only lists names, started with the job) or the ventilator's JobEnd says how
many there are, the bar says "counting" and shows no ETA.
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from zmqvision import protocol, sockets

if TYPE_CHECKING:
    from zmqvision.io import InputCounter

FIRST_FAILURES = 5  # failures named after the summary line


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class FailureLog:
    """The first failures a job's Progress snapshots name (each names the last few), in
    the order they were first heard, at most ``limit``: the summary shows them, so a user
    learns which images failed and why without opening the results file."""

    def __init__(self, limit: int = FIRST_FAILURES) -> None:
        self.limit = limit
        self.first: list[dict] = []
        self._images: set[str] = set()

    def add(self, failures: Sequence[dict]) -> None:
        for f in failures:
            if len(self.first) >= self.limit:
                return
            key = f.get("image") or f.get("path")
            if key in self._images:
                continue
            self._images.add(key)
            self.first.append(f)


def failure_line(f: dict) -> str:
    """``path: type: message``, without the path the message may already begin with."""
    path, message = f.get("path") or f.get("image") or "?", f.get("message") or ""
    message = message.removeprefix(f"{path}: ")
    return f"  {path}: {f.get('type', 'error')}: {message}"


def failure_report(done: protocol.JobDone, first: Sequence[dict]) -> list[str]:
    """Lines after the summary of a job with failures: the first few, and where all are."""
    if not done.failed:
        return []
    lines = []
    if first:
        lines.append("first failures:" if done.failed > len(first) else "failures:")
        lines.extend(failure_line(f) for f in first[:done.failed])
    where = (f'the "errors" list of {done.out}' if done.out.endswith(".json")
             else f'the records with an "error" in {done.out}')
    if done.failed > len(first):
        rest = done.failed - len(first)
        lines.append(f"{'and ' + str(rest) + ' more' if first else plural(rest, 'failure')}"
                     f": {where}")
    return lines


def skipped_notice(skipped: int, examples: Sequence[str]) -> str:
    """What a folder walk left out by extension, and how to take it."""
    names = ", ".join(os.path.basename(p) for p in examples)
    more = ", …" if skipped > len(examples) else ""
    return (f"{plural(skipped, 'file')} in the folders skipped: not images by their extension "
            f"({names}{more}); --ext '*' takes every file")


def resume_command(argv: Sequence[str], flag: str = "--resume",
                   value: str | None = None) -> str:
    """The command line that continues an interrupted one: the same arguments with
    ``--resume`` (``--resume VALUE`` for ventilate) added unless it is already there."""
    args = list(argv)
    if not any(a == flag or a.startswith(flag + "=") for a in args):
        args += [flag] if value is None else [flag, value]
    return "zmqvision " + shlex.join(args)


def worker_hint(tiles: str, sink_results: str, flags: str = "") -> str:
    """How to start a worker for a ventilator bound at ``tiles`` whose sink takes results
    at ``sink_results``: ``--connect HOST`` when both use the default ports on this host,
    else the endpoints themselves (a wildcard or loopback address as other hosts name this
    one, when the tiles socket listens on every interface). ``flags``: the worker's own
    (``--model M --stage2 S``: the models a job waits for)."""
    command = f"zmqvision worker {flags}".rstrip()
    import socket

    here = socket.gethostname()
    scheme, _, rest = tiles.partition("://")
    host, _, port = rest.rpartition(":")
    sink_host, _, sink_port = sink_results.removeprefix("tcp://").rpartition(":")
    local_sink = sink_host in ("127.0.0.1", "localhost", "::1", "[::1]", here)
    everywhere = scheme == "tcp" and host in ("*", "0.0.0.0", "[::]", "::")
    if (everywhere and port == str(sockets.TILES_PORT) and local_sink
            and sink_port == str(sockets.RESULTS_PORT)):
        return (f"start one with `{command}` on this host, or `{command} "
                f"--connect {here}` on another")
    if everywhere:
        tiles = f"tcp://{here}:{port}"
        if local_sink and sink_results.startswith("tcp://"):
            sink_results = f"tcp://{here}:{sink_port}"
    return f"start one with `{command} --tiles {tiles} --results {sink_results}`"


class StderrRelay:
    """Lines written to file descriptor 2 while the bar is drawn (log lines of this
    process, of its children, of C libraries) are printed above the bar instead of
    through it: fd 2 becomes a pipe, read by a thread that prints each line with the bar's
    console, which writes to the terminal through a copy of the original fd 2."""

    def __init__(self) -> None:
        self._saved = os.dup(2)
        self.terminal = os.fdopen(os.dup(self._saved), "w", buffering=1)
        self._read, write = os.pipe()
        sys.stderr.flush()
        os.dup2(write, 2)
        os.close(write)
        self._thread: threading.Thread | None = None

    def start(self, print_line) -> None:
        self._thread = threading.Thread(target=self._pump, args=(print_line,),
                                        name="zv-stderr", daemon=True)
        self._thread.start()

    def _pump(self, print_line) -> None:
        with os.fdopen(self._read, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    print_line(line.decode("utf-8", "replace"))
            if pending:
                print_line(pending.decode("utf-8", "replace"))

    def close(self) -> None:
        """fd 2 is the terminal again; what is still in the pipe is printed first (the
        pipe ends once every child that held it is gone)."""
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if self._thread is not None:
            self._thread.join(2.0)
        self.terminal.flush()


class JobProgressBar:
    """A rich progress bar over images, and what the summary needs from the job's Progress
    (the last snapshot, the first failures), collected even when no bar is drawn.

    rich is imported only when a bar is drawn: it is a tenth of a second of a one-image
    run's start-up, which --no-progress (and a non-terminal stderr) should not pay.
    ``console``: draw on this rich Console (tests) instead of the terminal.
    """

    def __init__(self, enabled: bool = True, counter: InputCounter | None = None,
                 console=None) -> None:
        self.counter = counter
        self.failures = FailureLog()
        self.last: protocol.Progress | None = None
        self.enabled = enabled and (console is not None or sys.stderr.isatty())
        self._relay: StderrRelay | None = None
        self._console = console
        self._bar = None
        self._task = None
        self.rate: float | None = None  # a live job's images/s, smoothed

    def _make_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        if self._console is None:
            self._relay = StderrRelay()
            self._console = Console(file=self._relay.terminal)
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            _CountColumn(),
            TextColumn("· {task.fields[cached]} cached · {task.fields[tiles]} tiles · "
                       "{task.fields[stage2]}{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            _EtaColumn(),
            console=self._console,
            transient=False,
            redirect_stderr=False,  # fd 2 goes through the relay (children's lines too)
        )
        if self._relay is not None:
            from rich.text import Text

            self._relay.start(lambda line: self._bar.console.print(Text(line)))

    def __enter__(self) -> JobProgressBar:
        if self.enabled:
            self._make_bar()
            self._bar.start()
            self._task = self._bar.add_task("zmqvision", total=None, tiles=0, failed=0,
                                            cached=0, live=None, stage2="")
            self._refresh()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._refresh()
            self._bar.stop()
            if self._relay is not None:
                self._relay.close()
                self._relay = None

    def total(self) -> int | None:
        """The job's image count: counted, or the ventilator's JobEnd; None until then."""
        p = self.last
        total = self.counter.total if self.counter is not None else None
        if total is None and p is not None:
            total = p.images_total
        if total is not None and p is not None:
            total = max(total, p.images_seen, p.images_done)
        return total

    def update(self, p: protocol.Progress) -> None:
        if p.live and self.last is not None and p.elapsed > self.last.elapsed:
            inst = (p.images_done - self.last.images_done) / (p.elapsed - self.last.elapsed)
            self.rate = inst if self.rate is None else 0.7 * self.rate + 0.3 * inst
        self.last = p
        self.failures.add(p.failures)
        self._refresh()

    def live_text(self) -> str | None:
        """A live job's ``3.2 images/s · lag 0.4 s · 5 dropped``; None for other jobs."""
        p = self.last
        if p is None or not p.live:
            return None
        text = f"{self.rate or 0.0:.1f} images/s · lag {p.lag or 0.0:.1f} s"
        return text + (f" · {p.dropped} dropped" if p.dropped else "")

    def _refresh(self) -> None:
        if not self.enabled or self._task is None:
            return
        p = self.last
        if p is None:
            self._bar.update(self._task, total=self.total())
            return
        stage = stage2_text(p.stage2, p.objects_seen, p.objects_done)
        self._bar.update(self._task, completed=p.images_done, total=self.total(),
                         tiles=p.tiles_done, failed=p.images_failed, cached=p.images_cached,
                         live=self.live_text(), stage2=f"{stage} · " if stage else "")

    def note(self, message: str) -> None:
        if self._bar is not None and self._bar.live.is_started:
            from rich.text import Text

            self._bar.console.print(Text(message, style="yellow"))  # no markup: paths have [ ]
        else:
            print(message, file=sys.stderr, flush=True)


def _columns():
    from rich.progress import ProgressColumn, TimeRemainingColumn
    from rich.text import Text

    class CountColumn(ProgressColumn):
        """``12/300 images``; ``12/… images (counting)`` while the total is unknown."""

        def render(self, task) -> Text:
            done = int(task.completed)
            if task.fields.get("live"):  # a live job: no total, a rate and a lag
                return Text(f"{done} images · {task.fields['live']}")
            if task.total is None:
                return Text(f"{done}/… images (counting)")
            total = int(task.total)
            return Text(f"{done}/{total} {'image' if total == 1 else 'images'}")

    class EtaColumn(TimeRemainingColumn):
        """No ETA until the total is known (rich's would be a guess from the images found
        so far)."""

        def render(self, task) -> Text:
            if task.fields.get("live"):
                return Text("live", style="progress.remaining")
            if task.total is None:
                return Text("ETA: counting", style="progress.remaining")
            return Text("ETA ") + super().render(task)

    return CountColumn, EtaColumn


def _CountColumn():  # noqa: N802 - made on first use: rich is imported only for a bar
    return _columns()[0]()


def _EtaColumn():  # noqa: N802
    return _columns()[1]()


# What a two-stage job's objects are called on screen (Progress.stage2 → noun).
OBJECT_NOUNS = {"identify": "faces", "plates": "plates", "ocr": "lines"}


def stage2_text(stage2: str | None, seen: int, done: int) -> str | None:
    """A two-stage job's second stage as ``faces 12/15`` (answered of found so far); None
    for a one-stage job."""
    if stage2 is None:
        return None
    return f"{OBJECT_NOUNS.get(stage2, 'objects')} {done}/{seen}"


def summary_line(done: protocol.JobDone) -> str:
    """The job's one-line summary; its tiles/s is the rate ``watch`` shows for it."""
    rate = done.tiles / done.seconds if done.seconds > 0 else 0.0
    return (
        f"{plural(done.images, 'image')}, {done.failed} failed, {done.cached} cached, "
        f"{done.tiles} tiles, {done.detections} detections in {done.seconds:.2f} s "
        f"({rate:.1f} tiles/s) -> {done.out}"  # scripts parse "N tiles, N detections"
    )
