"""``--embed-file PATH.npy``: a classification job's embeddings as one float32 ``.npy``
array of shape ``[rows, D]`` beside the records, instead of 1,280 numbers of JSON in each.

A record then says ``"embedding_row": k`` (each ``grid`` entry likewise): row ``k`` of
the file, which ``numpy.load(PATH, mmap_mode="r")`` maps without reading it all.

The file is written like the records (docs/reliability.md):

- **one writer**: an exclusive ``flock`` for the sink's life, as the results file has
  (``results.FileLocked`` names the holder); taken in ``__init__``, and the file changed
  only at ``open()``, once the sink is sure to run.
- **appended**: each row goes to the end (``pwrite`` at the tracked end: a file opened
  ``O_APPEND`` would ignore the offset of the header rewrites). The header has a fixed
  length (``HEADER_BYTES``), so growing the shape never moves the data.
- **durable before its record**: ``sync()`` rewrites the header's shape to the rows
  written and fsyncs; the journal calls it before it fsyncs the records (the group commit
  before acks), so a synced record's row is on disk. Between syncs the header may count
  fewer rows than the data holds; a reader sees the rows of synced records.
- **continued** (a restarted sink, ``run --resume``): ``match_records`` then ``open``.
  The rows are counted from the file's size (the truth, whatever the header last said),
  a partial last row is cut, and the records file (the journal the sink continues: the
  JSONL ``--out``, or the COCO output's journal) is cut at its first record whose row
  did not survive (a power loss can keep a record written after the last sync and lose
  its row): rows are appended in record order, so those records are the file's tail, and
  their images are done again. The other way round, rows past the highest one the
  surviving records name are **orphans** (the sink died after writing a row, before its
  record reached the records file; or its record was just cut): in record order nothing
  after them can name them, so they are cut (the file truncated, its header rewritten,
  fsynced) and the next row takes the first free index: the file's rows are exactly its
  records'. A records file that names no row (all the rows orphans) leaves ``[0, 0]``;
  one that did not exist before this sink is refused instead while the file has rows
  (they are another results file's, or the records were lost: nothing is cut).

A row whose length is not the file's ``D`` (another model into the same file) is not
written: ``append`` returns None and the record keeps its vector as a JSON list.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from zmqvision import results

log = logging.getLogger("zmqvision.sink")

MAGIC = b"\x93NUMPY\x01\x00"  # .npy version 1.0: a 2-byte header length follows
HEADER_BYTES = 128  # the whole header, padded: room for any shape, 64-byte aligned
DTYPE = np.dtype("<f4")


def header(rows: int, dim: int) -> bytes:
    """The .npy header (magic, version, length, dict, spaces, newline) of a C-order
    little-endian float32 ``[rows, dim]`` array, exactly HEADER_BYTES long."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    body = text.encode("ascii")
    pad = HEADER_BYTES - len(MAGIC) - 2 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape ({rows}, {dim}) does not fit the header")
    return MAGIC + (HEADER_BYTES - len(MAGIC) - 2).to_bytes(2, "little") + body + \
        b" " * pad + b"\n"


_HEADER_DICT = re.compile(
    rb"\{'descr': '<f4', 'fortran_order': False, 'shape': \(([0-9]{1,19}), ([0-9]{1,19})\), \} *\n")


def read_header(data: bytes) -> tuple[int, int]:
    """(rows, dim) of a header this module wrote; ValueError for anything else (another
    dtype, order or header length: not a file to append to)."""
    if len(data) < HEADER_BYTES or not data.startswith(MAGIC):
        raise ValueError("not a .npy file written by zmqvision (--embed-file)")
    length = int.from_bytes(data[len(MAGIC):len(MAGIC) + 2], "little")
    if len(MAGIC) + 2 + length != HEADER_BYTES:
        raise ValueError("a .npy header of another length than zmqvision writes")
    # Matched against the one form ``header`` writes, never evaluated (the file is the
    # user's: nothing read from it is run, not even as a literal).
    m = _HEADER_DICT.fullmatch(data[len(MAGIC) + 2:HEADER_BYTES])
    if m is None:
        raise ValueError("the .npy file is not a C-order float32 [rows, D] array as "
                         "zmqvision writes it")
    return int(m.group(1)), int(m.group(2))


class EmbeddingsFile:
    """Rows appended to one locked ``.npy`` file; ``sync`` makes them durable."""

    def __init__(self, path: str | os.PathLike) -> None:
        """Lock the file (created if missing); FileLocked when another process has it,
        before anything is changed."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd, self.created = results.open_locked(self.path, os.O_RDWR, "--embed-file")
        self.rows = 0
        self.dim = 0
        self.synced_rows = 0
        self.unsynced = False
        self.opened = False
        self.keep_rows: int | None = None  # continuing: the rows the records name (match_records)

    def present(self) -> tuple[int, int]:
        """(rows, D) the file holds whole, counted from its size (the header may count
        fewer: rows written after the last sync); (0, 0) for an empty file. ValueError:
        it is not an array this module can append to."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            return 0, 0
        _, dim = read_header(os.pread(self.fd, HEADER_BYTES, 0))
        return ((size - HEADER_BYTES) // (dim * DTYPE.itemsize) if dim else 0), dim

    def match_records(self, records: str | os.PathLike, *, new: bool) -> None:
        """Before continuing (``open(keep=True)``), make ``records`` (the records file the
        sink continues, locked by it; ``new``: created by this sink) and the rows agree:
        records whose row was lost are cut from it, and ``open`` keeps only the rows the
        rest name (the module doc). ValueError, nothing changed: records name rows of a
        file with none, or a records file that did not exist meets a file with rows."""
        rows, _ = self.present()
        scan = RowScan(records, rows)
        if rows == 0 and scan.named_max >= 0:
            raise ValueError(
                f"{records} has records whose embeddings are rows of another file than "
                f"{self.path} (it has none): give the --embed-file they were written to, "
                "or start afresh (--overwrite)")
        if rows and new:
            raise ValueError(
                f"{self.path} has {rows} embedding rows and {records} did not exist: the "
                "rows are another results file's (give that one, or another --embed-file), "
                "or start afresh (--overwrite)")
        if scan.cut:
            os.truncate(records, scan.cut_at)
            log.warning("journal %s: %d records name embedding rows that %s lost (a crash "
                        "before they were synced); their images will be done again",
                        records, scan.cut, self.path)
        self.keep_rows = scan.kept_max + 1

    def open(self, *, keep: bool) -> None:
        """Start afresh (an empty ``[0, 0]`` array), or continue the rows the file holds
        (a partial last row is cut, and after ``match_records`` the orphan rows past its
        records'; ValueError: not an array this module appends to)."""
        if keep:
            self.rows, self.dim = self.present()
            if self.keep_rows is not None and self.keep_rows < self.rows:
                log.warning("%s: %d embedding rows past the last one its records name "
                            "(written, their records lost to a crash) reclaimed; %d kept",
                            self.path, self.rows - self.keep_rows, self.keep_rows)
                self.rows = self.keep_rows
            if self.rows == 0:
                self.dim = 0  # no row left: the next job's model sets the length afresh
            self.synced_rows = self.rows
        os.ftruncate(self.fd, HEADER_BYTES + self.rows * self.dim * DTYPE.itemsize)
        os.pwrite(self.fd, header(self.rows, self.dim), 0)
        os.fsync(self.fd)
        self.opened = True

    def append(self, vector: np.ndarray) -> int | None:
        """Write one row; its index, or None when its length is not the file's."""
        vec = np.ascontiguousarray(vector, DTYPE).reshape(-1)
        if self.dim == 0:
            if vec.size == 0:
                return None
            self.dim = vec.size
            os.pwrite(self.fd, header(self.rows, self.dim), 0)  # rows is 0 here
        elif vec.size != self.dim:
            return None
        offset = HEADER_BYTES + self.rows * self.dim * DTYPE.itemsize
        view = memoryview(vec).cast("B")
        while view:  # pwrite may write less than asked (a signal, a full disk → OSError)
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n
        self.rows += 1
        self.unsynced = True
        return self.rows - 1

    def sync(self) -> None:
        """The header counts every row written, and all is on disk."""
        if not self.unsynced:
            return
        os.pwrite(self.fd, header(self.rows, self.dim), 0)
        os.fsync(self.fd)
        self.synced_rows = self.rows
        self.unsynced = False

    def close(self) -> None:
        """Sync and release the lock; a file this process created but never opened (the
        sink failed to start) is removed."""
        if self.fd < 0:
            return
        try:
            if self.opened:
                self.sync()
            elif self.created:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = -1


def record_rows(rec: dict) -> list[int]:
    """The sidecar rows a record names (its own, and its grid entries')."""
    out = []
    for entry in (rec, *(rec.get("grid") or ())):
        row = entry.get("embedding_row") if isinstance(entry, dict) else None
        if isinstance(row, int) and not isinstance(row, bool):
            out.append(row)
    return out


class RowScan:
    """One pass over a records file against a sidecar of ``rows`` rows: ``cut_at``, the
    offset of its first record that names a row >= ``rows`` (a row lost with the power
    while its record survived; rows go in record order, so from there on it is the tail
    to cut), None when all survived; ``cut``, the records from there; ``kept_max``, the
    highest row the records before it name (-1 for none); ``named_max``, over all."""

    def __init__(self, records: str | os.PathLike, rows: int) -> None:
        self.cut_at: int | None = None
        self.cut = 0
        self.kept_max = self.named_max = -1
        pos = 0
        with open(records, "rb") as fh:
            for line in fh:
                if b'"embedding_row"' in line:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        rec = None
                    named = record_rows(rec) if isinstance(rec, dict) else []
                    if any(r >= rows for r in named) and self.cut_at is None:
                        self.cut_at = pos
                    self.named_max = max([self.named_max, *named])
                    if self.cut_at is None:
                        self.kept_max = max([self.kept_max, *named])
                if self.cut_at is not None and line.strip():
                    self.cut += 1
                pos += len(line)
