"""Every picture's backbone embedding: from the embeddings store when its bytes were seen
before, else computed on the pool (``--embed`` classification jobs) and stored."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from zmqvision.cache.embeddings import EmbeddingStore
from zmqvision.io import content_hash

BACKBONE = "efficientnet-lite0"


@dataclass
class Embedded:
    """``vectors[i]`` is ``paths[i]``'s embedding; ``failed`` the paths that gave none
    (with the record's error), ``computed``/``cached`` how many came from where."""

    vectors: np.ndarray
    ok: np.ndarray  # bool per path
    failed: dict[str, dict] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0


def file_hash(path: str) -> str:
    with open(path, "rb") as fh:
        return content_hash(fh.read())


def embed_paths(pool, paths: Sequence[str], store: EmbeddingStore | None, backbone: str,
                on_done: Callable[[int, int], None] | None = None) -> Embedded:
    """Embeddings of ``paths`` (float32 ``[n, d]``), from ``store`` or the pool."""
    hashes = [file_hash(p) for p in paths]
    have = store.get(backbone, set(hashes)) if store is not None else {}
    todo: dict[str, str] = {}  # hash -> one path with those bytes
    for p, h in zip(paths, hashes, strict=True):
        if h not in have:
            todo.setdefault(h, p)
    hash_of = {p: h for h, p in todo.items()}
    new: dict[str, np.ndarray] = {}
    failed: dict[str, dict] = {}
    done = len(paths) - len(todo)
    if on_done is not None:
        on_done(done, len(paths))
    if todo:
        for record in pool.map(list(todo.values()), model=BACKBONE, embed=True, top_k=1):
            path = record.get("image")
            vec = record.get("embedding")
            if record.get("error") or not vec or path not in hash_of:
                failed[path] = record.get("error") or {"type": "no_embedding", "message": ""}
            else:
                new[hash_of[path]] = np.asarray(vec, np.float32)
            done += 1
            if on_done is not None:
                on_done(done, len(paths))
        if store is not None and new:
            store.put(backbone, new)
    vectors = {**have, **new}
    dim = len(next(iter(vectors.values()))) if vectors else 0
    out = np.zeros((len(paths), dim), np.float32)
    ok = np.zeros(len(paths), bool)
    for i, h in enumerate(hashes):
        v = vectors.get(h)
        if v is not None and len(v) == dim:
            out[i], ok[i] = v, True
        elif paths[i] not in failed:
            failed[paths[i]] = {"type": "no_embedding", "message": "its bytes failed elsewhere"}
    cached = sum(h in have for h in hashes)
    return Embedded(out, ok, failed, computed=len(new), cached=cached)
