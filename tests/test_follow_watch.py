"""A live job in ``zmqvision watch`` and the progress bar: a rate and a lag instead of a
total and an ETA, drops shown, and 'waiting for inputs' rather than stalled."""

from __future__ import annotations

from zmqvision import protocol
from zmqvision.console import JobProgressBar
from zmqvision.watch import STALLED_S, WatchState, render


def progress(elapsed: float, done: int, **live) -> protocol.Progress:
    return protocol.Progress(job="cam", images_seen=done, images_done=done, images_failed=0,
                             tiles_seen=done, tiles_done=done, elapsed=elapsed, done=False,
                             **live)


def test_watch_shows_rate_lag_and_drops_of_a_live_job():
    now = [0.0]
    state = WatchState(clock=lambda: now[0])
    state.ingest(progress(1.0, 2, live=True, lag=0.5, backlog=3, dropped=0))
    now[0] = 1.0
    state.ingest(progress(2.0, 6, live=True, lag=1.25, backlog=2, dropped=4))
    job = state.snapshot()["jobs"][0]
    assert job["live"] and job["lag"] == 1.25 and job["dropped"] == 4
    assert 2.0 < job["images_per_s"] <= 4.0 and job["images_total"] is None  # smoothed
    assert job["state"] == "running"
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(render(state, "ipc://x"))
    text = console.export_text()
    assert "lag 1.2s" in text and "4 dropped" in text and "img/s" in text

    state.ingest(progress(60.0, 6, live=True, lag=0.0, backlog=0, dropped=4))
    now[0] = 1.0 + STALLED_S * 2  # nothing came for long: not stalled, waiting
    assert state.snapshot()["jobs"][0]["state"] == "waiting"


def test_a_file_job_keeps_its_fields():
    header = progress(1.0, 2).header()
    assert "live" not in header and "lag" not in header  # only a live job's events grow


def test_the_bar_says_rate_and_lag():
    bar = JobProgressBar(enabled=False)
    bar.update(progress(1.0, 2, live=True, lag=0.5, backlog=1, dropped=0))
    bar.update(progress(2.0, 5, live=True, lag=0.25, backlog=1, dropped=2))
    assert bar.live_text() == "3.0 images/s · lag 0.2 s · 2 dropped"
