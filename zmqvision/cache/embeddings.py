"""Embeddings by content hash: a second ``zmqvision train`` over the same pictures skips
the backbone.

A separate store from the result cache, on purpose: a result entry is one job's record
(its key holds the tiling, merge and top-k, and ``--embed`` jobs are not cached there),
while an embedding depends on the pixels and the backbone alone. The key is
``emb1:<backbone>:<content hash>``, where ``<backbone>`` names the model file (name,
version, sha256 prefix) and its input size; the value is the vector as little-endian
float32 bytes. One SQLite file (``$ZMQVISION_CACHE/embeddings.sqlite3`` by default),
WAL, written in batches; a row that is not a whole float32 vector reads as a miss.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

KEY_VERSION = 1
_DTYPE = np.dtype("<f4")
_CHUNK = 500  # keys per SELECT (SQLite's variable limit is 999 on old builds)


def backbone_name(spec) -> str:
    """What an embedding depends on besides the pixels: the model file and input size."""
    w, h = spec.input_size
    return f"{spec.name}@{spec.version}#{(spec.sha256 or '')[:16]}@{w}x{h}"


def default_path() -> Path:
    from zmqvision.models.store import cache_dir

    return cache_dir() / "embeddings.sqlite3"


class EmbeddingStore:
    """``get`` and ``put`` float32 vectors by (backbone, content hash)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS embeddings "
                        "(key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self.db.commit()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(backbone: str, content_hash: str) -> str:
        return f"emb{KEY_VERSION}:{backbone}:{content_hash}"

    def get(self, backbone: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those ``hashes`` that have one."""
        wanted = {self.key(backbone, h): h for h in hashes}
        keys = list(wanted)
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), _CHUNK):
            part = keys[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for key, blob in self.db.execute(
                    f"SELECT key, vec FROM embeddings WHERE key IN ({marks})", part):
                if isinstance(blob, bytes) and blob and len(blob) % 4 == 0:
                    vec = np.frombuffer(blob, _DTYPE)
                    if np.isfinite(vec).all():
                        found[wanted[key]] = vec
        self.hits += len(found)
        self.misses += len(wanted) - len(found)
        return found

    def put(self, backbone: str, vectors: Mapping[str, np.ndarray]) -> None:
        rows = [(self.key(backbone, h), np.ascontiguousarray(v, _DTYPE).tobytes())
                for h, v in vectors.items()]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?)", rows)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
