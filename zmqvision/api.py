"""The Python API: the embedded pipeline as a function call.

``detect`` runs exactly what ``zmqvision run`` runs (sink and worker processes, real
sockets) and returns the records instead of leaving them in a file, so a notebook gets the
same results as the command line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import fields

from zmqvision import results
from zmqvision.merge import MergeConfig
from zmqvision.sink import SinkConfig
from zmqvision.ventilator import VentilateConfig
from zmqvision.worker import WorkerConfig

_JOB_FIELDS = {f.name for f in fields(VentilateConfig)} - {"inputs", "tiles", "sink", "events"}


def detect(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    model: str = "centerface",
    *,
    workers: int = 1,
    device: str = "CPU",
    threads: int | None = None,
    merge: str | MergeConfig = "nmm",
    **job_options,
) -> list[dict]:
    """Detect objects in images (files or directories); one record per image, sorted by path.

    ``job_options`` are the fields of ``VentilateConfig`` (tile_size, overlap, full_pass,
    score_threshold, input_size, max_pixels, timeout, …). Records have the JSONL schema of
    the README; failed images have ``error`` set instead of raising.
    """
    from zmqvision.run import RunPlan, run_job

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    unknown = set(job_options) - _JOB_FIELDS
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    merge_cfg = merge if isinstance(merge, MergeConfig) else MergeConfig(method=merge)
    job = VentilateConfig(inputs=tuple(os.fspath(p) for p in inputs), model=model,
                          merge=merge_cfg, **job_options)
    with tempfile.TemporaryDirectory(prefix="zmqvision-") as tmp:
        out = os.path.join(tmp, "results.jsonl")
        plan = RunPlan(
            job=job,
            sink=SinkConfig(out=out, events="tcp://127.0.0.1:0", cache=job.cache),
            worker=WorkerConfig(model=model, input_size=job.input_size, device=device,
                                threads=threads, score_threshold=job.score_threshold),
            workers=workers,
        )
        run_job(plan)
        records = list(results.read_jsonl(out))
    records.sort(key=lambda r: r["image"])
    return records
