"""What the sink tells subscribers besides acks and records: progress snapshots of every
job (full, not deltas, so late subscribers catch up), its own status, and each JobDone,
re-published for a minute so a subscriber that joined late (or missed it) still learns
that its job finished (``MAX_FINISHED`` jobs at most: forged jobs can finish too)."""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from zmqvision import protocol
from zmqvision.sink.jobs import JobState

DONE_JOB_REPUBLISH_S = 60.0
MAX_FINISHED = 1024


class Events:
    def __init__(self, publish: Callable[[list], None], sink_id: str,
                 progress_s: float) -> None:
        self.publish = publish
        self.sink_id = sink_id
        self.progress_s = progress_s  # at most one snapshot a job this often, unless forced
        self.started = time.monotonic()
        self.finished: OrderedDict[str, tuple[float, protocol.JobDone]] = OrderedDict()

    def progress(self, jobs: Iterable[JobState], force: bool = False) -> None:
        now = time.monotonic()
        for job in jobs:
            if force or (job.dirty and now - job.last_progress >= self.progress_s):
                self.publish(protocol.encode(job.progress()))
                job.dirty = False
                job.last_progress = now

    def job_done(self, job: JobState, done: protocol.JobDone) -> None:
        self.publish(protocol.encode(job.progress()))
        self.publish(protocol.encode(done))
        self.finished[done.job] = (time.monotonic(), done)
        while len(self.finished) > MAX_FINISHED:
            self.finished.popitem(last=False)

    def is_finished(self, job: str) -> bool:
        return job in self.finished

    def republish_finished(self) -> None:
        now = time.monotonic()
        while self.finished:
            first = next(iter(self.finished.values()))
            if now - first[0] <= DONE_JOB_REPUBLISH_S:
                break
            self.finished.popitem(last=False)
        for _, done in self.finished.values():
            self.publish(protocol.encode(done))

    def status(self, jobs_active: int, bad_messages: int) -> None:
        self.publish(protocol.encode(protocol.SinkStatus(
            sink=self.sink_id, host=socket.gethostname(), pid=os.getpid(),
            uptime=time.monotonic() - self.started, jobs_active=jobs_active,
            bad_messages=bad_messages)))
