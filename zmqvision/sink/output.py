"""Where each record goes, per job (``JobStart.options["records"]``):

- ``"write"`` (the default): the results file. With ``--format jsonl`` that file is the
  journal. With ``--format coco`` the records are journaled as JSONL beside the COCO
  file (``OUT`` + ``.journal.jsonl``), and at each job end the COCO file is rewritten
  whole (temp file and rename) from the journal: every image of every job it holds, so
  several jobs into one sink add up instead of overwriting each other, and a restarted
  sink with the same ``--out`` continues from the journal like a JSONL one.
- ``"publish"``: a ``zv.record`` on the PUB socket (for a library caller), holding
  exactly the bytes the results file would get, without the newline; no file is touched
  (no journal line, no COCO, no drawing).
- ``"both"``: written and published.

One serialiser (``results.record_json``) makes the line for both, so a published record
is byte-identical to the line that ``write`` would append.

With ``--embed-file`` the embeddings of a written job go to the journal's ``.npy``
sidecar (``zmqvision.sink.embeddings_file``) and its records say ``embedding_row``; a
publish-only job touches no file, so its records keep the vectors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from zmqvision import protocol, results
from zmqvision.sink.config import SinkConfig
from zmqvision.sink.jobs import JobState
from zmqvision.sink.journal import Journal

log = logging.getLogger("zmqvision.sink")


class RecordOutput:
    def __init__(self, config: SinkConfig, journal: Journal, publish: Callable[[list], None],
                 sink_id: str) -> None:
        self.config = config
        self.journal = journal
        self.publish = publish
        self.sink_id = sink_id

    def embedding_rows(self, job: JobState) -> Callable | None:
        """Where the job's embeddings go instead of its records: the sidecar's ``append``
        (vector → row, None when it cannot take it), or None (no --embed-file, or the
        job's records are not written)."""
        sidecar = self.journal.embeddings
        return sidecar.append if sidecar is not None and job.writes else None

    def deliver(self, job: JobState, record: dict, source: str) -> None:
        """``source``: the image file as the sink can read it (for ``--draw``)."""
        line = results.record_json(record)
        if job.writes:
            self.journal.write(job.id, record["id"], line)
        if job.publishes:
            self.publish(protocol.encode(protocol.Record(
                sink=self.sink_id, job=job.id, image=record["id"], json=line)))
        if job.writes and self.config.draw and record["error"] is None:
            results.draw_record(record, source, self.config.draw)

    def job_done(self, job: JobState) -> str:
        """At the job's end (its records synced): the COCO file rewritten. Returns what
        JobDone names as the job's output: the results file, or "" (published only)."""
        if not job.writes:
            return ""
        if self.config.format == "coco":
            results.write_coco(results.read_jsonl(self.journal.path, skip_bad=True),
                               job.labels, self.config.out)
        return os.path.abspath(self.config.out)
