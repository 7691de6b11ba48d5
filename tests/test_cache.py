"""The result cache's parts: key, entry, stores (real SQLite and Redis), the guard, the CLI.

The pipeline with a cache (hits never reach a worker, records equal) is in
tests/integration/test_cache.py.
"""

from __future__ import annotations

import copy
import logging
import sqlite3
import subprocess
import sys
import textwrap
import time

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import ROOT
from zmqvision import protocol
from zmqvision.boxes import Detections
from zmqvision.cache import ResultCache, job_fingerprint, open_cache, open_store, resolve_url
from zmqvision.cache.entry import Entry, EntryError, decode, encode
from zmqvision.cache.guard import Guarded
from zmqvision.cache.key import entry_key
from zmqvision.cache.sqlite_store import SqliteStore
from zmqvision.cli import cli
from zmqvision.models import resolve

pytestmark = pytest.mark.timeout(60)

HASH = "blake2b:" + "ab" * 32
DETS = Detections(np.array([[1.5, 2.25, 30.125, 40.0], [5.0, 6.0, 7.0, 8.0]]),
                  np.array([0.91003716, 0.5], np.float32), np.array([0, 0], np.int32))


def _job(**changes) -> protocol.JobStart:
    """A JobStart like the ventilator's for centerface at its defaults."""
    model = resolve("centerface").describe()
    start = {"model": model,
             "tiling": {"tile_size": [640, 640], "overlap": 0.2, "full_pass": False,
                        "input_size": [640, 640]},
             "merge": {"method": "nmm", "metric": "ios", "threshold": 0.5,
                       "class_agnostic": False},
             "options": {"score_threshold": None}}
    start = copy.deepcopy(start)
    for path, value in changes.items():
        part, _, key = path.partition(".")
        if key:
            start[part][key] = value
    return protocol.JobStart(job="j", **start)


# ------------------------------------------------------------------------------- key

CHANGES = {
    "model.name": "other", "model.version": "9.9", "model.sha256": "0" * 64,
    "model.input_size": [320, 320], "model.labels": ["head"], "model.score_threshold": 0.6,
    "model.nms_threshold": 0.1, "model.preprocess": {"layout": "NCHW"},
    "tiling.tile_size": [512, 512], "tiling.overlap": 0.3, "tiling.full_pass": True,
    "tiling.input_size": [320, 320], "merge.method": "nms", "merge.metric": "iou",
    "merge.threshold": 0.6, "merge.class_agnostic": True, "options.score_threshold": 0.4,
}


@pytest.mark.parametrize("setting", list(CHANGES))
def test_every_setting_that_changes_results_changes_the_key(setting):
    base = job_fingerprint(_job())
    changed = job_fingerprint(_job(**{setting: CHANGES[setting]}))
    assert changed != base
    assert entry_key(changed, HASH) != entry_key(base, HASH)


def test_the_key_ignores_what_does_not_change_results():
    base = job_fingerprint(_job())
    # Where the model file lies, its licence text, 1 written as 1.0, the job id and host.
    assert job_fingerprint(_job(**{"model.path": "/elsewhere/m.xml",
                                   "model.license": "x"})) == base
    assert job_fingerprint(_job(**{"merge.threshold": 0.5, "tiling.overlap": 0.2})) == base
    start = _job()
    other = protocol.JobStart(job="another", model=start.model, tiling=start.tiling,
                              merge={**start.merge, "threshold": 1 / 2}, host="elsewhere",
                              options=start.options)
    assert job_fingerprint(other) == base
    # The content hash, not the path: the same bytes anywhere are one key.
    assert entry_key(base, HASH) == f"zv1:{base}:{HASH}"
    assert entry_key(base, "") is None and entry_key(base, "x\n") is None


# ------------------------------------------------------------------------------- entry


def _entry(key="k", **kw) -> Entry:
    fields = dict(key=key, model="centerface@1.5.0", width=512, height=384, tiles=2,
                  detections=DETS, created=123.5)
    fields.update(kw)
    return Entry(**fields)


def test_entry_round_trip_is_exact_and_small():
    data = encode(_entry())
    e = decode(data, "k")
    assert (e.model, e.width, e.height, e.tiles, e.error, e.created) == (
        "centerface@1.5.0", 512, 384, 2, None, 123.5)
    assert e.detections.boxes.tolist() == DETS.boxes.tolist()
    assert e.detections.scores.tolist() == DETS.scores.tolist()  # float32 kept bit for bit
    assert e.detections.labels.tolist() == [0, 0]
    assert len(data) < 200


def _packed(**changes) -> bytes:
    m = msgpack.unpackb(encode(_entry()), raw=False)
    m.update(changes)
    return msgpack.packb(m, use_bin_type=True)


@pytest.mark.parametrize("data", [
    b"", b"\x00garbage", b"\x93\x01\x02\x03", msgpack.packb([1, 2]),
    _packed(v=2), _packed(v=None), _packed(key="other"), _packed(n=3), _packed(n=True),
    _packed(boxes=b"\0" * 7), _packed(w=-1), _packed(error="bad"), _packed(t=float("nan")),
    _packed(boxes=np.array([[np.nan, 0, 1, 1], [0, 0, 1, 1]], "<f8").tobytes()),
    _packed(error={"type": "corrupt_image", "message": "x"}),  # an error with detections
], ids=lambda d: repr(d[:12]))
def test_a_damaged_foreign_or_other_version_entry_does_not_parse(data):
    with pytest.raises(EntryError):
        decode(data, "k")


# ------------------------------------------------------------------------------- cache


@pytest.fixture
def sqlite_cache(tmp_path):
    cache = ResultCache(SqliteStore(tmp_path / "c.sqlite3"))
    yield cache
    cache.close()


def test_save_then_lookup_hits_and_another_model_misses(sqlite_cache):
    fp = job_fingerprint(_job())
    assert sqlite_cache.lookup(fp, HASH, "centerface@1.5.0") is None
    sqlite_cache.save(fp, HASH, model="centerface@1.5.0", width=5, height=6, tiles=1,
                      detections=DETS)
    assert sqlite_cache.lookup(fp, HASH, "centerface@1.5.0") is None  # not flushed yet
    sqlite_cache.flush()
    hit = sqlite_cache.lookup(fp, HASH, "centerface@1.5.0")
    assert hit is not None and len(hit.detections) == 2 and (hit.width, hit.height) == (5, 6)
    assert sqlite_cache.lookup(fp, "blake2b:" + "cd" * 32, "centerface@1.5.0") is None
    assert sqlite_cache.counts()["hits"] == 1


def test_failures_are_never_saved_and_an_old_failure_entry_is_a_miss(sqlite_cache):
    """A failed image is done again on every run: never "cached": true beside an error,
    never counted both cached and failed (issue 17.8). An entry with an error (saved by an
    older version) is a quiet miss, deleted."""
    fp = job_fingerprint(_job())
    error = {"type": "corrupt_image", "message": "damaged JPEG"}
    assert not sqlite_cache.save(fp, HASH, model="centerface@1.5.0", width=0, height=0,
                                 tiles=0, detections=None, error=error)
    sqlite_cache.flush()
    assert sqlite_cache.guard.store.stats()["entries"] == 0
    key = entry_key(fp, HASH)
    old = _entry(key=key, error=error, detections=Detections.empty(), tiles=0)
    sqlite_cache.guard.store.put_many([(key, encode(old), time.time())])
    assert sqlite_cache.lookup(fp, HASH, "centerface@1.5.0") is None
    assert sqlite_cache.guard.store.get(key) is None and sqlite_cache.corrupt == 0


@pytest.mark.parametrize("damage", ["garbage", "version", "foreign", "model"])
def test_corrupt_entry_is_a_logged_miss_and_is_replaced(sqlite_cache, damage, caplog):
    fp = job_fingerprint(_job())
    key = entry_key(fp, HASH)
    bad = {"garbage": b"\xc1not msgpack", "version": _packed(v=99, key=key),
           "foreign": encode(_entry(key="zv1:other")),
           "model": encode(_entry(key=key, model="ssd@1"))}[damage]
    sqlite_cache.guard.store.put_many([(key, bad, time.time())])
    with caplog.at_level(logging.WARNING, "zmqvision.cache"):
        assert sqlite_cache.lookup(fp, HASH, "centerface@1.5.0") is None
    assert "unusable" in caplog.text and sqlite_cache.corrupt == 1
    assert sqlite_cache.guard.store.get(key) is None  # gone, not read again
    sqlite_cache.save(fp, HASH, model="centerface@1.5.0", width=1, height=1, tiles=1,
                      detections=DETS)
    sqlite_cache.flush()
    assert sqlite_cache.lookup(fp, HASH, "centerface@1.5.0") is not None


def test_sqlite_store_is_wal_and_stats_clear_prune(tmp_path):
    store = SqliteStore(tmp_path / "c.sqlite3")
    try:
        now = time.time()
        store.put_many([("a", b"1", now - 40 * 86400), ("b", b"22", now)])
        mode = sqlite3.connect(tmp_path / "c.sqlite3").execute("PRAGMA journal_mode").fetchone()
        assert mode == ("wal",)
        s = store.stats()
        assert (s["entries"], s["bytes"]) == (2, 3)
        assert store.prune(now - 30 * 86400) == 1 and store.get("a") is None
        assert store.clear() == 1 and store.stats()["entries"] == 0
    finally:
        store.close()


def test_processes_share_one_sqlite_file_safely(tmp_path):
    """Four processes save and look up in one file at once: nothing lost, file sound."""
    db = tmp_path / "shared.sqlite3"
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from zmqvision.boxes import Detections
        from zmqvision.cache import ResultCache
        from zmqvision.cache.sqlite_store import SqliteStore
        me = int(sys.argv[1])
        c = ResultCache(SqliteStore({str(db)!r}))
        d = Detections(np.zeros((1, 4)), np.ones(1, np.float32), np.zeros(1, np.int32))
        for i in range(300):
            h = "blake2b:%064x" % (i % 200)   # overlapping images between processes
            if c.lookup("fp", h, "m@1") is None:
                c.save("fp", h, model="m@1", width=me, height=i, tiles=1, detections=d)
            if i % 10 == 0:
                c.flush()
        c.close()
        assert c.guard.failures == 0, c.guard.failures
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], cwd=ROOT)
             for n in range(4)]
    for p in procs:
        assert p.wait(50) == 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone() == (200,)
    conn.close()


# ------------------------------------------------------------------------------- guard


class _Flaky:
    """A store that fails while ``down`` (the guard's own logic, apart from any backend)."""

    url = "test://flaky"

    def __init__(self):
        self.down = True
        self.calls = 0

    def get(self, key):
        self.calls += 1
        if self.down:
            raise ConnectionError("refused")
        return None

    def close(self):
        pass


def test_guard_warns_once_rests_with_backoff_and_notices_recovery(caplog):
    now = [0.0]
    store = _Flaky()
    guard = Guarded(store, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "zmqvision.cache"):
        assert guard.call("get", "miss", "k") == "miss"
        for _ in range(100):  # resting: the store is not called at all
            assert guard.call("get", "miss", "k") == "miss"
        assert store.calls == 1
        now[0] = 1.5  # past the first backoff: tried again, fails, backs off longer
        guard.call("get", "miss", "k")
        now[0] = 2.5
        guard.call("get", "miss", "k")
        assert store.calls == 2
        store.down = False
        now[0] = 4.0
        assert guard.call("get", "miss", "k") is None
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("not usable" in w for w in warnings) == 1
    assert any("is back" in w for w in warnings)
    assert guard.available


# ------------------------------------------------------------------------------- urls, CLI


def test_urls_resolve_and_bad_ones_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ZMQVISION_RESULTS_CACHE", "off")
    assert resolve_url() is None and open_cache() is None
    monkeypatch.setenv("ZMQVISION_RESULTS_CACHE", f"sqlite://{tmp_path}/e.sqlite3")
    assert resolve_url() == f"sqlite://{tmp_path}/e.sqlite3"
    monkeypatch.delenv("ZMQVISION_RESULTS_CACHE")
    monkeypatch.setenv("ZMQVISION_CACHE", str(tmp_path))
    assert resolve_url() == f"sqlite://{tmp_path}/results.sqlite3"
    assert resolve_url("redis://h:1/0") == "redis://h:1/0"
    with pytest.raises(ValueError):
        open_store("http://example.org/")
    assert open_store("redis://:secret@h:1/0").url == "redis://:***@h:1/0"


def test_cache_commands(tmp_path):
    url = f"sqlite://{tmp_path}/c.sqlite3"
    store = open_store(url)
    now = time.time()
    store.put_many([("a", encode(_entry("a", created=now - 40 * 86400)), now - 40 * 86400),
                    ("b", encode(_entry("b", created=now)), now)])
    store.close()
    r = CliRunner()
    out = r.invoke(cli, ["cache", "--cache", url, "stats", "--json"])
    assert out.exit_code == 0 and '"entries": 2' in out.output
    out = r.invoke(cli, ["cache", "--cache", url, "prune", "--older-than", "30d", "--yes"])
    assert out.exit_code == 0 and "1 entries" in out.output
    out = r.invoke(cli, ["cache", "--cache", url, "clear"])
    assert out.exit_code == 0 and "1 entries deleted" in out.output
    out = r.invoke(cli, ["cache", "--cache", url, "prune", "--older-than", "soon"])
    assert out.exit_code == 2
    out = r.invoke(cli, ["run", str(tmp_path), "--cache", "ftp://x", "--no-progress"])
    assert out.exit_code == 2 and "cache URL" in out.output


# ------------------------------------------------------------------------------- Redis


def test_redis_store_round_trip_stats_prune(redis_server):
    cache = open_cache(redis_server.url)
    try:
        fp = job_fingerprint(_job())
        cache.save(fp, HASH, model="centerface@1.5.0", width=1, height=2, tiles=3,
                   detections=DETS)
        cache.flush()
        hit = cache.lookup(fp, HASH, "centerface@1.5.0")
        assert hit is not None and hit.tiles == 3
        store = cache.guard.store
        assert store.stats()["entries"] == 1
        assert store.prune(time.time() - 3600) == 0 and store.prune(time.time() + 1) == 1
        assert store.clear() == 0
    finally:
        cache.close()


def test_unreachable_redis_is_a_quick_miss_with_one_warning(caplog):
    from tests.redis_servers import free_port_pair

    cache = open_cache(f"redis://127.0.0.1:{free_port_pair()}/0")
    assert cache is not None
    try:
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, "zmqvision.cache"):
            for _ in range(50):
                assert cache.lookup("fp", HASH, "m@1") is None
                cache.save("fp", HASH, model="m@1", width=1, height=1, tiles=1,
                           detections=DETS)
                cache.flush()
        assert time.monotonic() - t0 < 3
        assert sum("not usable" in r.getMessage() for r in caplog.records) == 1
        assert cache.pending == 50  # kept for when it is back
    finally:
        cache.close()
