"""The default store: one SQLite file in the user's cache directory.

WAL mode lets readers (ventilators looking up) go on while a writer (a sink saving)
commits, and a busy timeout makes concurrent writers from several processes wait for each
other instead of failing. ``synchronous=NORMAL`` is enough: losing the last entries in a
power cut costs a re-computation, never a wrong answer. Each thread gets its own
connection (the ventilator looks up from its decode threads).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BUSY_TIMEOUT_MS = 10_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_created ON results (created);
"""


def _while_locked(step: Callable[[], object]) -> None:
    """Run ``step``, again while another process holds the lock, up to the busy timeout.

    SQLite does not call its busy handler for every lock: switching a new file to WAL
    while another process creates the same file answers "database is locked" at once
    (seen with four processes opening one new cache together), so a cache shared by
    several processes would fail to open by chance. Retried with a short, growing pause.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(0.1, pause * 2)


class SqliteStore:
    """Entries in a SQLite file; safe for several processes and threads at once."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path}"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn()  # fail now (unwritable directory, not a database), not mid-job

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            _while_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            _while_locked(lambda: conn.executescript(SCHEMA))
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def get(self, key: str) -> bytes | None:
        row = self._conn().execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_many(self, items: Sequence[tuple[str, bytes, float]]) -> None:
        if not items:
            return
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO results (key, value, created) "
                             "VALUES (?, ?, ?)", items)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def delete(self, key: str) -> None:
        self._conn().execute("DELETE FROM results WHERE key = ?", (key,))

    def stats(self, before: float | None = None) -> dict:
        """Entries, their bytes and dates; with ``before``, also ``prunable``: the same
        figures for the entries ``prune(before)`` would delete."""
        conn = self._conn()
        n, size, oldest, newest = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0), MIN(created), MAX(created) "
            "FROM results").fetchone()
        files = [self.path, Path(f"{self.path}-wal")]
        out = {"store": self.url, "entries": n, "bytes": size, "oldest": oldest,
               "newest": newest, "file_bytes": sum(p.stat().st_size for p in files
                                                   if p.exists())}
        if before is not None:
            n, size, oldest, newest = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0), MIN(created), "
                "MAX(created) FROM results WHERE created < ?", (before,)).fetchone()
            out["prunable"] = {"entries": n, "bytes": size, "oldest": oldest,
                               "newest": newest}
        return out

    def clear(self) -> int:
        n = self._conn().execute("DELETE FROM results").rowcount
        self._conn().execute("VACUUM")
        return n

    def prune(self, before: float) -> int:
        return self._conn().execute("DELETE FROM results WHERE created < ?", (before,)).rowcount

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
