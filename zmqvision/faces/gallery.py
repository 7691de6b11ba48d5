"""The gallery: enrolled people and exact cosine search over their embeddings.

A person is a name, one or more unit embeddings (several photos make a match more
robust to pose and light) and free metadata (where the photos came from, when). People
live in the same kinds of store as the result cache (``zmqvision.cache``): a SQLite
file under the cache directory by default, or Redis (``redis://…``,
``redis+cluster://…``) so that many hosts share one gallery. The URL is parsed and the
connection made by ``zmqvision.cache.open_store``; this module only adds its own table
(SQLite) or key prefix (Redis), so the result cache's ``clear`` and ``prune`` never
touch it.

Each person is one msgpack value (never pickle: a shared gallery is as untrusted as a
shared cache), written whole; enrolling reads, appends and writes, so two processes
enrolling the SAME name at the same moment may lose one of the photos (different names
never interfere).

Search is exact: every enrolled embedding is a row of one float32 matrix, a query's
similarities are one matrix product, and a person's similarity is that of their best
row. At a million rows that is ~0.77 GB and tens of milliseconds per batch of queries
(benchmarks/gallery.py, docs/faces.md); beyond that, an approximate index would be the
next step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np

ENV_VAR = "ZMQVISION_FACES_GALLERY"
DB_NAME = "faces.sqlite3"
FORMAT_VERSION = 1
# Cosine similarity at or above which a face is said to be an enrolled person. Measured
# with MobileFaceNet on real faces (docs/faces.md, benchmarks/face_threshold.py).
DEFAULT_THRESHOLD = 0.6
MAX_NAME_LENGTH = 200
# Query rows × gallery rows per matrix product: bounds the similarity block (float32).
_BLOCK = 1 << 24
# Gallery rows per slice at most: a slice (24 MB at 192-d) stays in cache while every
# query of the batch passes over it (benchmarks/gallery.py).
_SLICE = 1 << 15

SCHEMA = """
CREATE TABLE IF NOT EXISTS faces (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
"""
REDIS_PREFIX = "zmqvision:faces:"


class GalleryError(ValueError):
    """A stored person that cannot be read, or a request that cannot be met."""


@dataclass(frozen=True)
class Person:
    """An enrolled person: ``embeddings`` ``[K, D]`` float32 unit rows."""

    name: str
    embeddings: np.ndarray
    metadata: Mapping = field(default_factory=dict)
    created: float = 0.0

    def encode(self) -> bytes:
        e = np.ascontiguousarray(self.embeddings, "<f4")
        return msgpack.packb({"v": FORMAT_VERSION, "name": self.name, "dim": e.shape[1],
                              "emb": e.tobytes(), "meta": dict(self.metadata),
                              "created": self.created}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Person:
        """The person in ``data``; GalleryError for anything that is not one."""
        try:
            d = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=1 << 30)
            if not isinstance(d, dict) or d.get("v") != FORMAT_VERSION:
                raise ValueError("not a version-1 person")
            dim, emb = int(d["dim"]), d["emb"]
            if dim <= 0 or not isinstance(emb, bytes) or len(emb) % (4 * dim):
                raise ValueError("embedding bytes do not match the dimension")
            meta = d.get("meta", {})
            if not isinstance(meta, dict) or not isinstance(d["name"], str):
                raise ValueError("bad name or metadata")
            e = np.frombuffer(emb, "<f4").reshape(-1, dim).astype(np.float32)
            return cls(d["name"], e, meta, float(d.get("created", 0.0)))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise GalleryError(f"unreadable gallery entry: {exc}") from exc


# ---------------------------------------------------------------- stores


class SqlitePeople:
    """People in a table of their own, on the result cache's SQLite connection code
    (WAL, busy timeout, one connection per thread)."""

    def __init__(self, store) -> None:
        self._store = store  # a zmqvision.cache.sqlite_store.SqliteStore
        self.url = store.url
        self._conn().executescript(SCHEMA)

    def _conn(self):
        return self._store._conn()  # noqa: SLF001 - its per-thread connection, reused

    def get(self, name: str) -> bytes | None:
        row = self._conn().execute("SELECT value FROM faces WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, name: str, value: bytes) -> None:
        self._conn().execute("INSERT OR REPLACE INTO faces (name, value, updated) "
                             "VALUES (?, ?, ?)", (name, value, time.time()))

    def delete(self, name: str) -> bool:
        return self._conn().execute("DELETE FROM faces WHERE name = ?", (name,)).rowcount > 0

    def items(self) -> Iterator[tuple[str, bytes]]:
        for name, value in self._conn().execute("SELECT name, value FROM faces ORDER BY name"):
            yield name, bytes(value)

    def close(self) -> None:
        self._store.close()


class RedisPeople:
    """People as ``zmqvision:faces:<name>`` keys, on the result cache's Redis client
    (same URL forms, timeouts and cluster support)."""

    def __init__(self, store) -> None:
        self._store = store  # a zmqvision.cache.redis_store.RedisStore
        self.url = store.url

    def get(self, name: str) -> bytes | None:
        return self._store.client().get(REDIS_PREFIX + name)

    def put(self, name: str, value: bytes) -> None:
        self._store.client().set(REDIS_PREFIX + name, value)

    def delete(self, name: str) -> bool:
        return bool(self._store.client().delete(REDIS_PREFIX + name))

    def items(self) -> Iterator[tuple[str, bytes]]:
        client = self._store.client()
        keys = sorted(client.scan_iter(match=REDIS_PREFIX + "*", count=1000))
        for i in range(0, len(keys), 500):
            batch = keys[i:i + 500]
            pipe = client.pipeline(transaction=False)
            for k in batch:
                pipe.get(k)
            for k, v in zip(batch, pipe.execute(), strict=True):
                if v is not None:
                    yield k.decode()[len(REDIS_PREFIX):], v

    def close(self) -> None:
        self._store.close()


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``$ZMQVISION_FACES_GALLERY``, else ``faces.sqlite3`` in the cache
    directory (beside the models and the result cache)."""
    if url:
        return url
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    from zmqvision.models.store import cache_dir

    return f"sqlite://{cache_dir() / DB_NAME}"


def open_people(url: str | None = None):
    """The store a gallery URL names (see ``resolve_url``); ValueError for a bad URL."""
    from zmqvision.cache.sqlite_store import SqliteStore
    from zmqvision.cache.url import open_store

    store = open_store(resolve_url(url))
    return SqlitePeople(store) if isinstance(store, SqliteStore) else RedisPeople(store)


# ---------------------------------------------------------------- the gallery


class Gallery:
    """Enrolled people and exact cosine search over them.

    The search matrix is built on first use from the store and kept; ``refresh()``
    rebuilds it (another process may have enrolled someone). Changes made through this
    object update it at once.
    """

    def __init__(self, people, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.people = people
        self.url = people.url
        self.threshold = float(threshold)
        self._matrix: np.ndarray | None = None
        self._owner: np.ndarray = np.zeros(0, np.int64)  # row → index into _names
        self._names: list[str] = []

    @classmethod
    def open(cls, url: str | None = None, threshold: float = DEFAULT_THRESHOLD) -> Gallery:
        return cls(open_people(url), threshold)

    def close(self) -> None:
        self.people.close()

    # -- enrolment

    def enroll(self, name: str, embeddings: np.ndarray,
               metadata: Mapping | None = None) -> Person:
        """Add ``embeddings`` ``[K, D]`` (normalised here) to ``name``, creating the
        person if new; ``metadata`` entries are merged into theirs."""
        check_name(name)
        e = _unit_rows(embeddings)
        old = self.get(name)
        if old is not None:
            if old.embeddings.shape[1] != e.shape[1]:
                raise GalleryError(f"{name!r} has {old.embeddings.shape[1]}-d embeddings; "
                                   f"these are {e.shape[1]}-d (another model?)")
            person = Person(name, np.concatenate([old.embeddings, e]),
                            {**old.metadata, **(metadata or {})}, old.created)
        else:
            person = Person(name, e, dict(metadata or {}), time.time())
        self.people.put(name, person.encode())
        self._matrix = None
        return person

    def get(self, name: str) -> Person | None:
        data = self.people.get(name)
        return None if data is None else Person.decode(data)

    def remove(self, name: str) -> bool:
        gone = self.people.delete(name)
        self._matrix = None
        return gone

    def enrolled(self) -> list[Person]:
        """Every readable person, by name (an unreadable entry is skipped: it is
        reported by ``zmqvision faces list``, never fatal to a search)."""
        out = []
        for _name, data in self.people.items():
            try:
                out.append(Person.decode(data))
            except GalleryError:
                continue
        return out

    # -- search

    def refresh(self) -> None:
        people = self.enrolled()
        self._names = [p.name for p in people]
        if people:
            dims = {p.embeddings.shape[1] for p in people}
            if len(dims) > 1:
                raise GalleryError(f"gallery {self.url} mixes embedding sizes {sorted(dims)}")
            self._matrix = np.ascontiguousarray(np.concatenate([p.embeddings for p in people]))
            self._owner = np.repeat(np.arange(len(people)),
                                    [len(p.embeddings) for p in people])
        else:
            self._matrix = np.zeros((0, 0), np.float32)
            self._owner = np.zeros(0, np.int64)

    def load_matrix(self, matrix: np.ndarray, names: Sequence[str],
                    owner: np.ndarray | None = None) -> None:
        """Search over an in-memory ``matrix`` (unit rows) instead of the store: for
        benchmarks and callers that keep embeddings elsewhere. ``owner[i]`` is the index
        in ``names`` of row ``i`` (default: one row per name)."""
        self._matrix = np.ascontiguousarray(matrix, np.float32)
        self._names = list(names)
        self._owner = (np.arange(len(self._matrix)) if owner is None
                       else np.asarray(owner, np.int64))

    def best(self, embeddings: np.ndarray) -> list[tuple[str | None, float]]:
        """Per query row, the most similar enrolled person and the cosine similarity
        (``(None, -1.0)`` when nobody is enrolled), whatever the threshold."""
        if self._matrix is None:
            self.refresh()
        m = self._matrix
        assert m is not None
        q = _unit_rows(embeddings)
        if not len(m):
            return [(None, -1.0)] * len(q)
        if q.shape[1] != m.shape[1]:
            raise GalleryError(f"queries are {q.shape[1]}-d, the gallery {m.shape[1]}-d")
        idx, sims = best_rows(m, q)
        return [(self._names[self._owner[i]], float(s))
                for i, s in zip(idx.tolist(), sims.tolist(), strict=True)]

    def identify(self, embeddings: np.ndarray, threshold: float | None = None,
                 ) -> list[tuple[str, float] | None]:
        """Per query row, ``(name, similarity)`` of the best match at or above
        ``threshold`` (default: the gallery's), else None."""
        thr = self.threshold if threshold is None else float(threshold)
        return [(n, s) if n is not None and s >= thr else None
                for n, s in self.best(embeddings)]


def best_rows(matrix: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact search: for each query row, the index of the matrix row with the largest dot
    product, and that product (the first such row on ties).

    The gallery is walked once per call, in slices of at most ``_SLICE`` rows (and so
    that the similarity block, queries × slice, stays under ``_BLOCK`` floats): a large
    gallery is memory-bound, so reading it once for the whole batch of queries, a
    cache-sized slice at a time, is what batching buys."""
    nq, n = len(queries), len(matrix)
    idx = np.zeros(nq, np.int64)
    sims = np.full(nq, -np.inf, np.float32)
    rows = np.arange(nq)
    step = max(1, min(_SLICE, _BLOCK // max(nq, 1)))
    for start in range(0, n, step):
        block = queries @ matrix[start:start + step].T
        i = block.argmax(axis=1)
        s = block[rows, i]
        better = s > sims
        idx[better] = i[better] + start
        sims[better] = s[better]
    return idx, sims


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise GalleryError(f"a person's name must be 1 to {MAX_NAME_LENGTH} characters, "
                           f"got {name!r}")
    if any(ord(c) < 32 for c in name):
        raise GalleryError(f"a person's name may not hold control characters: {name!r}")


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, np.float32)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2 or e.shape[1] == 0 or not np.isfinite(e).all():
        raise GalleryError(f"embeddings must be finite [K, D] rows, got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if (norms == 0).any():
        raise GalleryError("a zero embedding cannot be compared")
    return e / norms
