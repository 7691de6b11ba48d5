"""zmqvision.follow without the pipeline: when a file counts as complete (inotify's close,
the polling fallback's stable size and mtime), the bounded queue and its drop-oldest
policy, ``--until``. The writers here are driven by the test, so a file is provably
incomplete while the watch looks at it."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time

import pytest

from tests.conftest import EXAMPLES, wait_until
from zmqvision.follow import WAIT, Arrivals, Inotify, Settling, follow, parse_until

pytestmark = pytest.mark.timeout(60)


def taken(live, into: list) -> list:
    """Everything ``take`` hands out now (paths as plain strings)."""
    while True:
        got = live.take()
        if got is None or got is WAIT:
            return into
        into.append(str(got))


# ----------------------------------------------------------------------------- pure parts


def test_settling_needs_two_equal_looks_settle_seconds_apart():
    s = Settling(1.0)
    s.observe("a", (10, 1), now=0.0)
    assert s.ready(5.0) == []  # seen once: not proven stable
    s.observe("a", (20, 2), now=1.0)  # grew: the clock starts again
    s.observe("a", (20, 2), now=1.5)
    assert s.ready(1.9) == []  # unchanged for 0.9 s only
    assert s.ready(2.0) == ["a"]
    assert "a" not in s  # handed out once


def test_arrivals_drop_oldest_keeps_the_newest_and_counts():
    q = Arrivals(3, "drop-oldest", clock=iter(range(100)).__next__)
    q.producing()
    for i in range(10):
        assert q.put(f"f{i}")
    assert q.dropped == 7 and q.most == 3 and len(q) == 3
    assert q.oldest() == 7  # when f7 arrived
    assert [q.take()[0] for _ in range(3)] == ["f7", "f8", "f9"]
    assert q.take() is WAIT  # a producer may still give more
    q.produced()
    assert q.take() is None  # the end


def test_arrivals_queue_makes_the_producer_wait_for_room():
    q = Arrivals(2, "queue")
    q.producing()
    q.put("a")
    q.put("b")
    third = threading.Thread(target=q.put, args=("c",), daemon=True)
    third.start()
    third.join(0.2)
    assert third.is_alive() and len(q) == 2 and q.dropped == 0  # blocked, nothing lost
    assert q.take()[0] == "a"
    third.join(5)
    assert not third.is_alive()
    assert [q.take()[0] for _ in range(2)] == ["b", "c"]


def test_until_takes_durations_times_of_day_and_dates():
    now = dt.datetime(2030, 1, 31, 17, 0).astimezone().timestamp()
    assert parse_until("90m", now) == now + 5400
    assert parse_until("18:00", now) == now + 3600
    assert parse_until("16:00", now) == now + 23 * 3600  # passed today: tomorrow's
    assert parse_until("2030-01-31T17:30", now) == now + 1800
    with pytest.raises(ValueError):
        parse_until("soon", now)


# ----------------------------------------------------------------------------- folders


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
def test_existing_then_new_files_each_once(tmp_path, poll):
    if not poll and not Inotify.available():
        pytest.skip("no inotify here")
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "old.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    live = follow(tmp_path, poll=poll, settle=0.2 if poll else None)
    try:
        got: list[str] = []
        wait_until(lambda: taken(live, got), 10, "the file already there")
        shutil.copy(EXAMPLES / "chelsea.jpg", tmp_path / ".new.jpg.part")
        (tmp_path / ".new.jpg.part").rename(tmp_path / "new.jpg")  # renamed into place
        shutil.copy(EXAMPLES / "coffee.jpg", tmp_path / "copied.jpg")
        wait_until(lambda: len(taken(live, got)) >= 3, 10, "the new files")
        assert sorted(p.rsplit("/", 1)[-1] for p in got) == ["copied.jpg", "new.jpg",
                                                             "old.jpg"]
        mode = live.watches[0].mode
        assert mode == ("poll" if poll else "inotify")
    finally:
        live.close()


def test_inotify_never_hands_out_a_file_still_open_for_writing(tmp_path):
    """The slow writer keeps its file open between chunks; a complete file dropped
    meanwhile comes out, the slow one only once its writer closed it."""
    if not Inotify.available():
        pytest.skip("no inotify here")
    data = (EXAMPLES / "astronaut.jpg").read_bytes()
    live = follow(tmp_path)
    try:
        assert live.wait_watching()
        got: list[str] = []
        slow = open(tmp_path / "slow.jpg", "wb")  # noqa: SIM115 - closed below, by the test
        try:
            slow.write(data[:1000])
            slow.flush()
            shutil.copy(EXAMPLES / "coffee.jpg", tmp_path / "quick.jpg")
            wait_until(lambda: "quick.jpg" in " ".join(taken(live, got)), 10, "quick.jpg")
            slow.write(data[1000:5000])
            slow.flush()
            shutil.copy(EXAMPLES / "chelsea.jpg", tmp_path / "quick2.jpg")
            wait_until(lambda: "quick2.jpg" in " ".join(taken(live, got)), 10, "quick2.jpg")
            assert not any(p.endswith("slow.jpg") for p in got)  # still being written
            slow.write(data[5000:])
        finally:
            slow.close()
        wait_until(lambda: any(p.endswith("slow.jpg") for p in taken(live, got)), 10,
                   "slow.jpg once closed")
        assert sorted(p.rsplit("/", 1)[-1] for p in got) == ["quick.jpg", "quick2.jpg",
                                                             "slow.jpg"]
    finally:
        live.close()


def test_polling_waits_for_a_stable_size(tmp_path):
    """Polling: a growing file is not handed out while it grows between two polls; once
    it stops changing for ``settle`` it is."""
    live = follow(tmp_path, poll=True, settle=2.0)  # polls every 0.5 s
    watch = live.watches
    try:
        assert live.wait_watching()
        got: list[str] = []
        taken(live, got)
        growing = tmp_path / "growing.jpg"
        data = (EXAMPLES / "astronaut.jpg").read_bytes()
        with open(growing, "wb") as fh:
            for start in range(0, 3000, 1000):  # grows between every two polls
                fh.write(data[start:start + 1000])
                fh.flush()
                polls = watch[0].polls
                wait_until(lambda p=polls: watch[0].polls >= p + 2, 10, "two polls")
                assert taken(live, got) == []
            fh.write(data[3000:])
        wait_until(lambda: taken(live, got), 10, "the file once stable")
        assert [p.rsplit("/", 1)[-1] for p in got] == ["growing.jpg"]
    finally:
        live.close()


def test_until_ends_the_follow(tmp_path):
    shutil.copy(EXAMPLES / "astronaut.jpg", tmp_path / "a.jpg")
    os.utime(tmp_path / "a.jpg", (time.time() - 60, time.time() - 60))  # written long ago
    live = follow(tmp_path, until=time.time() + 0.5)
    try:
        assert [p.rsplit("/", 1)[-1] for p in live] == ["a.jpg"]  # iterating ends
    finally:
        live.close()
