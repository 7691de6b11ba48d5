"""Acks to ventilators (on the PUB socket): tiles received, and images whose records are
delivered, batched so that a busy sink sends a few messages a second, not one per tile.

The order is the contract (docs/reliability.md): a written image is acked only after
its record is synced to disk, and result-cache saves are flushed after the records and
before the acks, so a saved entry never outruns its record and an acked image survives a
crash. A record that is only published (``records: "publish"``) has nothing to sync: its
image is acked right after the ``zv.record`` goes out (``image_now``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from zmqvision import protocol
from zmqvision.cache import ResultCache
from zmqvision.sink.journal import Journal

ACK_EVERY_S = 0.1
ACK_BATCH = 2000  # tiles or images per Ack message


class AckBatcher:
    def __init__(self, sink_id: str, publish: Callable[[list], None], journal: Journal,
                 cache: ResultCache | None) -> None:
        self.sink_id = sink_id
        self.publish = publish
        self.journal = journal
        self.cache = cache
        self.pending: dict[str, tuple[list, list]] = {}  # per job: (tiles, images)
        self.last = 0.0

    def tile(self, job: str, image: str, index: int) -> None:
        self.pending.setdefault(job, ([], []))[0].append((image, index))

    def image(self, job: str, image: str) -> None:
        """Acked at the next flush, after the journal is synced."""
        self.pending.setdefault(job, ([], []))[1].append(image)

    def image_now(self, job: str, image: str) -> None:
        """A published record's image: nothing to sync, acked at once."""
        self.publish(protocol.encode(protocol.Ack(sink=self.sink_id, job=job,
                                                  images=(image,))))

    def flush(self, force: bool = False) -> None:
        """Publish pending acks, at most every ACK_EVERY_S (or now with ``force``)."""
        now = time.monotonic()
        if not self.pending or (not force and now - self.last < ACK_EVERY_S):
            return
        if any(images for _, images in self.pending.values()):
            self.journal.sync()
        if self.cache is not None:
            self.cache.flush()  # after the records: a saved entry never outruns its record
        for job, (tiles, images) in self.pending.items():
            for i in range(0, max(len(tiles), len(images)), ACK_BATCH):
                self.publish(protocol.encode(protocol.Ack(
                    sink=self.sink_id, job=job, tiles=tuple(tiles[i:i + ACK_BATCH]),
                    images=tuple(images[i:i + ACK_BATCH]))))
        self.pending.clear()
        self.last = now
