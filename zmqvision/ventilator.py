"""The ventilator role: one job over files against a running sink and workers
(``zmqvision ventilate``), as a user of the Pool.

The work is done by ``zmqvision.engine.Engine`` (inputs, window, worker link, sink link;
see its module doc and docs/reliability.md); ``zmqvision.Pool`` runs it in a thread.
``VentilateConfig`` is the command's configuration, and ``Ventilator`` a handle on one
such job that binds first (so workers can connect) and runs when asked, which is how the
benchmarks and a few tests drive it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import zmq

from zmqvision import io, protocol, sockets
from zmqvision.engine import JobFailed
from zmqvision.inputs import ReadAhead, read_resume
from zmqvision.links import is_local_peer, peer_address
from zmqvision.plan import JobSettings

__all__ = ["JobFailed", "VentilateConfig", "Ventilator", "is_local_peer", "peer_address",
           "read_resume", "ventilate"]


@dataclass(frozen=True)
class VentilateConfig(JobSettings):
    """A file job (``zmqvision run``/``ventilate``): the settings every record of it is
    made with (``JobSettings``: model, tiling, merge, score threshold, ...), its inputs,
    and where and how the ventilator role runs it."""

    inputs: tuple[str, ...] = ()
    tiles: str = sockets.bind_endpoint(sockets.TILES_PORT)
    sink: str = sockets.connect_endpoint(sockets.RESULTS_PORT)
    events: str = sockets.connect_endpoint(sockets.EVENTS_PORT)
    extensions: frozenset[str] | None = None
    recursive: bool = True
    decode_threads: int = 2
    read_ahead: int = 2
    window: int = 256  # images in flight (announced, not yet written by the sink)
    wire: str = "auto"  # tile encoding: "raw", "jpeg", or "auto" (raw to local workers only)
    lease_s: float = 120.0  # a tile unanswered this long is sent again
    timeout: float | None = None  # give up if the job is not complete after this long
    job_id: str | None = None
    resume: str | None = None  # a results file: skip the images it already has
    cache: str | None = "auto"  # result cache URL; "auto": $ZMQVISION_RESULTS_CACHE or SQLite
    curve: str | None = None  # key directory: CURVE on every socket (security.py)
    insecure: bool = False  # a plain-text tiles bind other hosts can reach was asked for
    # Multi-frame files (animated GIF, multi-page TIFF): "first" frame only, or "all" (an
    # image, a record, per frame).
    frames: io.FrameMode = "first"
    # Live jobs (zmqvision.follow, docs/cameras.md): follow the folders (new files as they
    # are complete) until ``until`` (time.time() seconds) or Ctrl-C; ``settle``/``poll``:
    # how a complete file is told; ``when_behind``: "queue" or "drop-oldest" (None: queue
    # for files, drop-oldest for live streams) with at most ``queue`` inputs waiting.
    follow: bool = False
    until: float | None = None
    settle: float | None = None
    poll: bool = False
    when_behind: str | None = None
    queue: int | None = None
    # Video (zmqvision.video): frames sampled per second of video (None: every frame);
    # ``live``: read video files as cameras, at their own frame rate.
    fps: float | None = None
    live: bool = False

    def input_paths(self) -> Iterator[str]:
        """The job's image files, walked lazily, in the order they are sent (for a live job:
        those there now; ``inputs_source`` follows them)."""
        return io.iter_image_paths(self.inputs, recursive=self.recursive,
                                   extensions=self.extensions)

    @property
    def is_live(self) -> bool:
        """Inputs that never end by themselves: a followed folder, a stream, a camera."""
        from zmqvision.video import is_stream

        return self.follow or self.live or any(is_stream(i) for i in self.inputs)

    def inputs_source(self):
        """What the job reads: ``input_paths()``, or for a live job a ``follow.LiveInputs``
        (its threads start at its first ``take``)."""
        if not self.is_live:
            return self.input_paths()
        from zmqvision.follow import FollowOptions, LiveInputs

        streams = [i for i in self.inputs if self.live and os.path.isfile(i)]
        live = LiveInputs([i for i in self.inputs if i not in streams], follow=self.follow,
                          options=FollowOptions(settle=self.settle, poll=self.poll,
                                                extensions=self.extensions,
                                                recursive=self.recursive),
                          until=self.until, when_behind=self.when_behind, limit=self.queue,
                          streams=streams)
        live.configure(fps=self.fps, max_pixels=self.max_pixels, realtime=True)
        return live


class Ventilator:
    """One file job on a Pool that joins a running sink: binds the tiles socket at once,
    reads ahead on ``prefetch``, runs on ``run``."""

    def __init__(self, config: VentilateConfig, ctx: zmq.Context | None = None) -> None:
        from zmqvision.pool import Pool

        self.config = config
        self._pool = Pool.connect(tiles=config.tiles, sink=config.sink, events=config.events,
                                  curve=config.curve, model=config.model, cache=config.cache,
                                  lease_s=config.lease_s, wire=config.wire, ctx=ctx,
                                  insecure=config.insecure,
                                  decode_threads=config.decode_threads)
        self.plan = self._pool.plan(JobSettings.of(config))
        # The results file is read once: its job id now, its records' ids for the run.
        self._resumed = read_resume(config.resume) if config.resume else (None, None)
        self.job_id = config.job_id or self._resumed[0] or protocol.new_job_id()
        self.config = replace(config, job_id=self.job_id)
        self._reader: ReadAhead | None = None

    @property
    def tiles_endpoint(self) -> str:
        return self._pool.tiles_endpoint

    def bind(self) -> str:
        """The bound tiles endpoint (bound when the Ventilator was made)."""
        return self._pool.tiles_endpoint

    @property
    def sink_id(self) -> str | None:
        return self._pool.engine.sink.sink_id

    @property
    def dispatch(self):
        return self._pool.engine.dispatch

    def job_start_message(self) -> protocol.JobStart:
        return self.plan.job_start(self.job_id)

    def prefetch(self) -> None:
        """Start reading and decoding the first inputs now, before ``run``."""
        if self._reader is None:
            self._reader = self._pool.reader(self.config, self.plan)

    def run(self, stop: sockets.StopFlag | None = None,
            on_progress: Callable[[protocol.Progress], None] | None = None,
            on_wait: Callable[[str], None] | None = None,
            watchdog: Callable[[], None] | None = None) -> protocol.JobDone:
        """Send the whole job and wait for the sink's JobDone; raises JobFailed."""
        reader, self._reader = self._reader, None
        return self._pool.run_files(self.config, stop, on_progress, on_wait, watchdog,
                                    reader=reader, resumed=self._resumed)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._pool.close()


def ventilate(
    config: VentilateConfig,
    stop: sockets.StopFlag | None = None,
    on_progress: Callable[[protocol.Progress], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> protocol.JobDone:
    """Run one job against an already running sink and workers."""
    vent = Ventilator(config)
    try:
        return vent.run(stop, on_progress, on_wait)
    finally:
        vent.close()
