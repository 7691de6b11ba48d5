"""Which cache a command uses: ``--cache URL``, ``--no-cache``, else
``$ZMQVISION_RESULTS_CACHE``, else a SQLite file in the user's cache directory.

URLs: ``sqlite:///ABS/PATH`` (or a plain file path), ``redis://[:PASSWORD@]HOST:PORT/DB``
(``rediss://`` for TLS), ``redis+cluster://HOST:PORT`` (any node of the cluster).
``off`` (or ``none``) turns the cache off, also in the environment variable (the test
suite uses that, so that only the tests about the cache use one).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from zmqvision.cache.result_cache import ResultCache

log = logging.getLogger("zmqvision.cache")

ENV_VAR = "ZMQVISION_RESULTS_CACHE"
AUTO = "auto"
OFF_WORDS = frozenset({"off", "none", "no", "false", "0", ""})
DB_NAME = "results.sqlite3"


def default_path() -> Path:
    """Beside the models: ``$ZMQVISION_CACHE``, else the platform's user cache dir."""
    from zmqvision.models.store import cache_dir

    return cache_dir() / DB_NAME


def resolve_url(url: str | None = AUTO) -> str | None:
    """The URL a command will use, or None for no cache."""
    if url is None or url.strip().lower() in OFF_WORDS:
        return None
    if url == AUTO:
        env = os.environ.get(ENV_VAR)
        if env is not None:
            return resolve_url(env) if env != AUTO else f"sqlite://{default_path()}"
        return f"sqlite://{default_path()}"
    return url


def open_store(url: str):
    """The store a URL names; ValueError for a URL we cannot use."""
    if url.startswith("sqlite://"):
        from zmqvision.cache.sqlite_store import SqliteStore

        path = url[len("sqlite://"):]
        if not path:
            raise ValueError(f"{url!r} names no file; use sqlite:///ABSOLUTE/PATH")
        return SqliteStore(os.path.expanduser(path))
    scheme = url.partition("://")[0].lower() if "://" in url else None
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from zmqvision.cache.redis_store import RedisStore

        try:
            import redis  # noqa: F401 - a clear message now, not a failure mid-job
        except ImportError:
            raise ValueError("a Redis cache needs the redis package: pip install redis") from None
        return RedisStore(url, cluster=scheme.endswith("+cluster"))
    if scheme is None:
        from zmqvision.cache.sqlite_store import SqliteStore

        return SqliteStore(os.path.expanduser(url))
    raise ValueError(f"unknown cache URL {url!r}: use sqlite:///PATH, redis://HOST:PORT/DB "
                     "or redis+cluster://HOST:PORT")


def check_url(url: str | None) -> None:
    """Raise ValueError for a URL that cannot name a store (before anything starts)."""
    resolved = resolve_url(url)
    if resolved is None:
        return
    if "://" in resolved and resolved.partition("://")[0].lower() not in (
            "sqlite", "redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise ValueError(f"unknown cache URL {resolved!r}: use sqlite:///PATH, "
                         "redis://HOST:PORT/DB or redis+cluster://HOST:PORT")


def open_cache(url: str | None = AUTO) -> ResultCache | None:
    """The cache to use, or None (off, or it cannot be opened: a warning, never a failure).
    A Redis that is down now is still returned: its guard retries it during the job."""
    resolved = resolve_url(url)
    if resolved is None:
        return None
    try:
        return ResultCache(open_store(resolved))
    except Exception as exc:  # noqa: BLE001 - an unusable cache must not stop the job
        log.warning("result cache %s cannot be opened (%s); going on without it",
                    resolved, exc)
        return None
