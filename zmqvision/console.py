"""What a person sees: the progress bar (drawn from the sink's Progress events, the same
ones ``watch`` will show) and the end-of-job summary."""

from __future__ import annotations

import sys

from zmqvision import protocol


class JobProgressBar:
    """A rich progress bar over images; the total is unknown until the ventilator has walked
    every input, so until then the bar grows with the images announced.

    rich is imported only when a bar is drawn: it is a tenth of a second of a one-image
    run's start-up, which --no-progress (and a non-terminal stderr) should not pay.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._console = None
        self._bar = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._console = Console(stderr=True)
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("images · {task.fields[cached]} cached · {task.fields[tiles]} "
                           "tiles · {task.fields[failed]} failed"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
        self._task = None

    def __enter__(self) -> JobProgressBar:
        if self.enabled:
            self._bar.start()
            self._task = self._bar.add_task("zmqvision", total=None, tiles=0, failed=0,
                                            cached=0)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.stop()

    def update(self, p: protocol.Progress) -> None:
        if not self.enabled or self._task is None:
            return
        total = p.images_total if p.images_total is not None else max(p.images_seen, 1)
        self._bar.update(self._task, completed=p.images_done, total=total,
                         tiles=p.tiles_done, failed=p.images_failed, cached=p.images_cached)

    def note(self, message: str) -> None:
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(message, style="yellow"))  # no markup: paths have [ ]
        else:
            print(message, file=sys.stderr, flush=True)


def summary_line(done: protocol.JobDone) -> str:
    rate = done.tiles / done.seconds if done.seconds > 0 else 0.0
    return (
        f"{done.images} images, {done.failed} failed, {done.cached} cached, {done.tiles} tiles, "
        f"{done.detections} detections in {done.seconds:.2f} s ({rate:.1f} tiles/s) "
        f"-> {done.out}"
    )
