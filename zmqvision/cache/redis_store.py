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

    def stats(self) -> dict:
        n = size = 0
        oldest = newest = None
        for batch in self._batches():
            for value in self._each("get", batch):
                if value is None:
                    continue
                n += 1
                size += len(value)
                t = created_of(value)
                if t is not None:
                    oldest = t if oldest is None else min(oldest, t)
                    newest = t if newest is None else max(newest, t)
        return {"store": self.url, "entries": n, "bytes": size, "oldest": oldest,
                "newest": newest}

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
