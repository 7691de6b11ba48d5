"""``zmqvision cache prune``: a duration needs a unit, what will go is shown first, a
terminal is asked, anything else needs ``--yes``, ``--dry-run`` deletes nothing — against
a real SQLite file and a real redis-server alike."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from tests.conftest import ROOT
from zmqvision.boxes import Detections
from zmqvision.cache import open_store
from zmqvision.cache.entry import Entry, encode
from zmqvision.cache.prune import PrunePlan, parse_duration, say_bytes, say_duration
from zmqvision.cli import cli

pytestmark = pytest.mark.timeout(60)

DAY = 86400.0
NOW = time.time()
# Three entries 40-50 days old, one of 10 days, two fresh: `--older-than 30d` takes 3 of 6.
AGES_DAYS = (50, 45, 40, 10, 0.01, 0)


def _fill(url: str) -> list[bytes]:
    store = open_store(url)
    values = []
    try:
        items = []
        for i, age in enumerate(AGES_DAYS):
            t = NOW - age * DAY
            value = encode(Entry(key=f"k{i}", model="centerface@1.5.0", width=8, height=8,
                                 tiles=1, detections=Detections.empty(), created=t))
            values.append(value)
            items.append((f"k{i}", value, t))
        store.put_many(items)
    finally:
        store.close()
    return values


def _count(url: str) -> int:
    store = open_store(url)
    try:
        return store.stats()["entries"]
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "redis"])
def cache_url(request, tmp_path):
    """A cache with six entries of known ages, in a SQLite file or a redis-server."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/c.sqlite3"
    else:
        url = request.getfixturevalue("redis_server").url
    _fill(url)
    return url


def _prune(url: str, *args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, ["cache", "--cache", url, "prune", *args], input=stdin)


def _old_bytes(url: str) -> int:
    store = open_store(url)
    try:
        return store.stats(NOW - 30 * DAY)["prunable"]["bytes"]
    finally:
        store.close()


def test_a_bare_number_is_a_usage_error_naming_the_units(cache_url):
    out = _prune(cache_url, "--older-than", "30", "--yes")
    assert out.exit_code == 2, out.output
    for unit in ("d (days)", "h (hours)", "m (minutes)", "s (seconds)", "30d"):
        assert unit in out.output, out.output
    assert _count(cache_url) == 6


def test_durations_parse_with_their_unit_only():
    assert parse_duration("30d") == 30 * DAY and parse_duration("12h") == 12 * 3600
    assert parse_duration("90m") == 5400 and parse_duration("45s") == 45
    assert parse_duration(" 1.5W ") == 1.5 * 7 * DAY
    for bad in ("30", "", "d", "-3d", "soon", "infd", "nand"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert say_duration(30 * DAY) == "30 days" and say_duration(5400) == "1.5 hours"
    assert say_duration(14 * DAY) == "2 weeks" and say_duration(45) == "45 seconds"
    assert say_bytes(120) == "120 bytes" and say_bytes(3_450_000) == "3.5 MB"


def test_the_plan_counts_what_prune_then_deletes(cache_url):
    store = open_store(cache_url)
    try:
        plan = PrunePlan.of(store, 30 * DAY, now=NOW)
        assert (plan.entries, plan.total) == (3, 6)
        assert plan.bytes == _old_bytes(cache_url) > 0
        assert plan.oldest == pytest.approx(NOW - 50 * DAY)
        assert plan.newest == pytest.approx(NOW - 40 * DAY)
        assert store.prune(plan.before) == plan.entries
    finally:
        store.close()


def test_dry_run_shows_count_bytes_and_dates_and_deletes_nothing(cache_url):
    out = _prune(cache_url, "--older-than", "30d", "--dry-run")
    assert out.exit_code == 0, out.output
    text = out.output
    assert "3 of 6 entries (50 %)" in text, text
    assert f"{say_bytes(_old_bytes(cache_url))}, are older than 30 days" in text
    oldest = time.strftime("%Y-%m-%d", time.localtime(NOW - 50 * DAY))
    newest = time.strftime("%Y-%m-%d", time.localtime(NOW - 40 * DAY))
    assert f"oldest {oldest}" in text and f"newest {newest}" in text, text
    assert "dry run: nothing deleted" in text
    assert _count(cache_url) == 6


def test_not_a_terminal_and_no_yes_refuses_and_deletes_nothing(cache_url):
    out = _prune(cache_url, "--older-than", "30d", stdin="y\n")  # piped, not a terminal
    assert out.exit_code == 2, out.output
    assert "3 of 6 entries" in out.output  # what would go is still shown
    assert "not a terminal" in out.output and "--yes" in out.output, out.output
    assert _count(cache_url) == 6


def test_yes_deletes_exactly_the_old_entries(cache_url):
    out = _prune(cache_url, "--older-than", "30d", "--yes")
    assert out.exit_code == 0, out.output
    assert "3 entries deleted" in out.output
    assert _count(cache_url) == 3
    out = _prune(cache_url, "--older-than", "30d", "--yes")  # nothing left that old
    assert out.exit_code == 0 and "nothing to delete" in out.output, out.output
    assert _count(cache_url) == 3


def _on_terminal(url: str, answer: bytes) -> tuple[int, str]:
    """Run the prune in a real pseudo-terminal; answer its question with ``answer``."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "zmqvision", "cache", "--cache", url,
                             "prune", "--older-than", "30d"], stdin=follower,
                            stdout=follower, stderr=follower, cwd=ROOT, close_fds=True)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 30
    answered = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the child closed the terminal: it has exited
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(leader, answer + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=10), seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)


def test_a_terminal_is_asked_and_no_keeps_everything(cache_url):
    code, text = _on_terminal(cache_url, b"n")
    assert code == 0, text
    assert "3 of 6 entries" in text and "Delete these 3 entries? [y/N]" in text, text
    assert "nothing deleted" in text
    assert _count(cache_url) == 6


def test_a_terminal_is_asked_and_yes_deletes(cache_url):
    code, text = _on_terminal(cache_url, b"y")
    assert code == 0, text
    assert "3 entries deleted" in text, text
    assert _count(cache_url) == 3
