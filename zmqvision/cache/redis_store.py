"""Entries in Redis (``redis://HOST:PORT/DB``) or a Redis Cluster
(``redis+cluster://HOST:PORT``), for many hosts sharing one cache.

Each entry is one string key ``zmqvision:result:<key>``; a cluster spreads them over its
nodes by hash slot. The client is built with short timeouts and no retries of its own: a
Redis that is gone must cost a lookup a fraction of a second, and the guard
(``zmqvision.cache.guard``) decides when to try again. Building a cluster client talks to
the cluster (it reads the slot map), so it happens on first use, under the guard too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from zmqvision.cache.entry import created_of

PREFIX = "zmqvision:result:"
CONNECT_TIMEOUT_S = 0.5
SOCKET_TIMEOUT_S = 2.0
SCAN_COUNT = 1000


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _Tally:
    """Count, bytes and the date range of the entries seen so far."""

    def __init__(self) -> None:
        self.entries = self.bytes = 0
        self.oldest: float | None = None
        self.newest: float | None = None

    def add(self, size: int, created: float | None) -> None:
        self.entries += 1
        self.bytes += size
        if created is not None:
            self.oldest = created if self.oldest is None else min(self.oldest, created)
            self.newest = created if self.newest is None else max(self.newest, created)

    def as_dict(self) -> dict:
        return {"entries": self.entries, "bytes": self.bytes, "oldest": self.oldest,
                "newest": self.newest}


class RedisStore:
    """Bytes in, bytes out, under one key prefix; ``cluster`` picks RedisCluster."""

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        self.url = redact(url)
        self.cluster = cluster
        self._target = url.replace("redis+cluster://", "redis://", 1) if cluster else url
        self._client = None

    def client(self):
        if self._client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            kw = {"socket_connect_timeout": CONNECT_TIMEOUT_S,
                  "socket_timeout": SOCKET_TIMEOUT_S, "retry": Retry(NoBackoff(), 0)}
            if self.cluster:
                from redis.cluster import RedisCluster

                self._client = RedisCluster.from_url(self._target, **kw)
            else:
                self._client = redis.Redis.from_url(self._target, **kw)
        return self._client

    def get(self, key: str) -> bytes | None:
        return self.client().get(PREFIX + key)

    def put_many(self, items: Sequence[tuple[str, bytes, float]]) -> None:
        if not items:
            return
        pipe = self.client().pipeline(transaction=False)
        for key, value, _created in items:
            pipe.set(PREFIX + key, value)
        pipe.execute()

    def delete(self, key: str) -> None:
        self.client().delete(PREFIX + key)

    def keys(self) -> Iterator[bytes]:
        """Every entry key (with the prefix), over every node of a cluster."""
        return self.client().scan_iter(match=PREFIX + "*", count=SCAN_COUNT)

    def _batches(self, size: int = 500) -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        for k in self.keys():
            batch.append(k)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _each(self, command: str, keys: list[bytes]) -> list:
        pipe = self.client().pipeline(transaction=False)
        for k in keys:
            getattr(pipe, command)(k)
        return pipe.execute()

    def stats(self, before: float | None = None) -> dict:
        """Entries, their bytes and dates, in one scan; with ``before``, also
        ``prunable``: the same figures for the entries ``prune(before)`` would delete
        (those that do not parse among them, without a date)."""
        total, old = _Tally(), _Tally()
        for batch in self._batches():
            for value in self._each("get", batch):
                if value is None:
                    continue
                t = created_of(value)
                total.add(len(value), t)
                if before is not None and (t or 0.0) < before:
                    old.add(len(value), t)
        out = {"store": self.url, **total.as_dict()}
        if before is not None:
            out["prunable"] = old.as_dict()
        return out

    def clear(self) -> int:
        n = 0
        for batch in self._batches():
            n += sum(self._each("delete", batch))
        return n

    def prune(self, before: float) -> int:
        """Delete entries made before ``before`` (and any that do not parse)."""
        n = 0
        for batch in self._batches():
            values = self._each("get", batch)
            old = [k for k, v in zip(batch, values, strict=True)
                   if v is not None and ((created_of(v) or 0.0) < before)]
            if old:
                n += sum(self._each("delete", old))
        return n

    def reset(self) -> None:
        """Drop the client after a failure: the next call builds a new one (for a cluster,
        with a fresh slot map)."""
        self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
