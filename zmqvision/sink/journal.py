"""The results file as the sink's journal: one writer, what each job already has, and the
sync that comes before any image is acked.

The JSONL file is the journal (for ``--format coco``, the JSONL file beside the COCO
output). It has one writer at a time: ``results.JsonlWriter`` holds an exclusive
``flock`` on it for the sink's life, and a second sink (or `zmqvision run`) given the same
file is refused, naming the holder's pid read from ``/proc/locks``, before it changes
anything. Opening is two steps so that nothing is lost to a sink that fails to start:
``Journal(...)`` takes the lock, ``open()`` (called once every check, the binds included,
has passed) empties the file (overwrite) or repairs and reads it (continue).
"""

from __future__ import annotations

import contextlib
import logging
import os

from zmqvision import results
from zmqvision.idset import IdSet
from zmqvision.sink.embeddings_file import EmbeddingsFile
from zmqvision.sink.jobs import JournalCounts

log = logging.getLogger("zmqvision.sink")


class Journal:
    """The records written so far, per job: which images (8 bytes each, so a repeat is
    never written twice) and their counts (a restarted sink's progress starts there)."""

    def __init__(self, path: str, *, keep: bool, embed_file: str | None = None) -> None:
        """``embed_file``: the ``.npy`` sidecar of classification embeddings
        (``--embed-file``, zmqvision.sink.embeddings_file), locked with the records and
        synced before them."""
        self.path = path
        self.keep = keep  # continue what the file holds; else start it afresh at open()
        self.writer = results.JsonlWriter(path, append=True)  # FileLocked: another writer
        try:
            self.embeddings = None if embed_file is None else EmbeddingsFile(embed_file)
        except BaseException:  # the sidecar is another's: leave nothing behind
            if self.writer.created:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self.writer.close()
            raise
        self.opened = False
        self.unsynced = False  # records written since the last sync
        self.written: dict[str, IdSet] = {}
        self.counts: dict[str, JournalCounts] = {}

    def open(self) -> None:
        """Once the sink is sure to run: start afresh, or read what the file holds. A last
        line cut short by a crash is not a record: it is removed."""
        if not self.keep:
            self.writer.truncate()
        else:
            self.writer.repair()
            self._check_rows()
            self._load()
        if self.embeddings is not None:
            self.embeddings.open(keep=self.keep)
        self.opened = True

    def _check_rows(self) -> None:
        """Continuing with a sidecar: records whose row did not survive are cut (their
        images done again), and the rows no record names will be (``match_records``)."""
        if self.embeddings is not None:
            self.embeddings.match_records(self.path, new=self.writer.created)

    def _load(self) -> None:
        for rec in results.read_jsonl(self.path, skip_bad=True):
            job, image = rec.get("job"), rec.get("id")
            if not isinstance(job, str) or not isinstance(image, str):
                continue
            counts = self.counts.setdefault(job, JournalCounts())
            counts.done += 1
            counts.failed += rec.get("error") is not None
            counts.cached += rec.get("cached") is True
            counts.detections += len(rec.get("detections") or [])
            self.remember(job, image)
        if self.counts:
            log.info("journal %s: %s", self.path, ", ".join(
                f"job {j}: {c.done} records" for j, c in self.counts.items()))

    def write(self, job: str, image: str, line: bytes) -> None:
        """One record (``results.record_json``); durable at the next ``sync``."""
        self.writer.write_line(line)
        self.remember(job, image)
        self.unsynced = True

    def remember(self, job: str, image: str) -> None:
        written = self.written.get(job)
        if written is None:
            written = self.written[job] = IdSet()
        written.add(image)

    def has(self, job: str, image: str) -> bool:
        written = self.written.get(job)
        return written is not None and image in written

    def sync(self) -> None:
        """Records durable, and before them the sidecar rows they name."""
        if self.unsynced:
            if self.embeddings is not None:
                self.embeddings.sync()
            self.writer.sync()
            self.unsynced = False

    def close(self) -> None:
        """Release the lock; a file this sink created but never opened (it failed to
        start) is removed, so a failed start leaves nothing behind."""
        if not self.opened and self.writer.created:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        try:
            if self.embeddings is not None:
                self.embeddings.close()  # synced first (its records may be, at exit)
        finally:
            self.writer.close()
