"""The sink's settings, and where its journal lives for each output format."""

from __future__ import annotations

from dataclasses import dataclass

from zmqvision import sockets

# COCO is one JSON document, rewritten whole: the records that make it are journaled as
# JSONL beside it, under this suffix (see zmqvision.sink.output).
COCO_JOURNAL_SUFFIX = ".journal.jsonl"


@dataclass(frozen=True)
class SinkConfig:
    results: str = sockets.bind_endpoint(sockets.RESULTS_PORT)
    events: str = sockets.bind_endpoint(sockets.EVENTS_PORT)
    events_fallback: str | None = None  # bound instead when ``events`` is taken (run)
    out: str = "results.jsonl"
    format: str = "jsonl"  # "jsonl" or "coco"
    draw: str | None = None
    masks: str | None = None  # segmentation: directory of the palette-PNG label masks
    append: bool = False  # keep --out (the journal) and continue its jobs; else start afresh
    once: bool = False  # exit after the first job completes
    status_s: float = 1.0
    progress_s: float = 0.2
    cache: str | None = "auto"  # result cache URL; "auto": $ZMQVISION_RESULTS_CACHE or SQLite
    curve: str | None = None  # key directory: CURVE on both bound sockets (security.py)
    insecure: bool = False  # allow a plain-text bind that other hosts can reach
    # Classification embeddings into this float32 .npy [rows, D] (records name their row)
    # instead of a JSON list in each record (zmqvision.sink.embeddings_file).
    embed_file: str | None = None

    @property
    def journal(self) -> str:
        """The JSONL file every written record goes to first: ``out`` itself, or, for COCO,
        a file beside it from which ``out`` is rewritten at each job end."""
        return self.out if self.format == "jsonl" else self.out + COCO_JOURNAL_SUFFIX
