"""Bytes the sink spends on what strangers can send it: results waiting for their job
or image to be announced, and jobs announced but not started. Every such table counts
its bytes here, so one budget bounds them together whatever their number.

A result's bytes are its detection arrays and its strings plus a fixed overhead for the
Python objects (measured: a Result with no boxes is about 1 KiB of heap); a job's are
its ``zv.job`` header as sent, times the Python objects' growth over msgpack.
"""

from __future__ import annotations

from dataclasses import dataclass

from zmqvision import protocol

RESULT_OVERHEAD_BYTES = 1024
JOB_GROWTH = 8  # a JobState takes about this many times its header's msgpack bytes
JOB_OVERHEAD_BYTES = 8192


def result_bytes(msg: protocol.Result) -> int:
    d = msg.detections
    size = d.boxes.nbytes + d.scores.nbytes + d.labels.nbytes
    if msg.embedding is not None:  # a classifier's: counted like the rest
        size += msg.embedding.nbytes
    size += len(msg.job) + len(msg.image) + len(msg.worker) + len(msg.model)
    if msg.error:
        size += sum(len(str(k)) + len(str(v)) for k, v in msg.error.items())
    return size + RESULT_OVERHEAD_BYTES


def job_bytes(start: protocol.JobStart) -> int:
    return JOB_GROWTH * len(protocol.encode(start)[1]) + JOB_OVERHEAD_BYTES


@dataclass
class Budget:
    """Bytes held against a limit; the tables that hold them shed their oldest entries
    while ``over``."""

    limit: int
    bytes: int = 0

    def add(self, n: int) -> None:
        self.bytes += n

    def remove(self, n: int) -> None:
        self.bytes -= n

    @property
    def over(self) -> bool:
        return self.bytes > self.limit
