"""Credit, leases, dead workers and backup tasks, with a controlled clock."""

from __future__ import annotations

from zmqvision.dispatch import Dispatcher


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make():
    clock = Clock()
    return Dispatcher(dead_periods=3.0, lease_s=60.0, clock=clock), clock


def test_tiles_go_only_to_workers_with_credit_most_credit_first():
    d, _ = make()
    assert d.pick_worker() is None
    d.ready(b"a", 1)
    d.ready(b"b", 3)
    assert d.pick_worker() == b"b"
    d.assign(("img", 0), b"b")
    d.assign(("img", 1), b"b")
    assert d.pick_worker() == b"a"  # 1 credit each: the less used worker goes first
    d.assign(("img", 2), d.pick_worker())
    d.assign(("img", 3), d.pick_worker())
    assert d.pick_worker() is None and d.total_credit() == 0


def test_ack_releases_the_lease_and_credit_comes_from_the_worker():
    d, clock = make()
    d.ready(b"a", 1)
    d.assign(("img", 0), b"a")
    clock.t += 0.5
    d.done(("img", 0))
    assert not d.is_leased(("img", 0)) and d.workers[b"a"].leases == set()
    assert d.pick_worker() is None  # credit comes back only with the worker's next Ready
    assert abs(d.typical_tile_s() - 0.5) < 1e-9


def test_a_silent_worker_is_dead_after_three_periods_and_its_tiles_go_first():
    d, clock = make()
    d.heard(b"a", period=0.5)
    d.ready(b"a", 2)
    d.ready(b"b", 2)
    d.assign(("x", 0), b"a")
    d.assign(("x", 1), b"a")
    d.assign(("y", 0), b"b")
    clock.t += 1.4
    d.heard(b"b")
    assert d.expire() == []
    clock.t += 0.2  # a: 1.6 s silent > 3 × 0.5 s
    assert d.expire() == [b"a"]
    assert set(d.resend) == {("x", 0), ("x", 1)} and d.requeued == 2
    assert not d.is_leased(("x", 0)) and d.is_leased(("y", 0))
    assert b"a" not in d.workers


def test_a_tile_with_another_copy_out_is_not_requeued_when_one_holder_dies():
    d, clock = make()
    d.ready(b"a", 1)
    d.ready(b"b", 1)
    d.assign(("x", 0), b"a")
    clock.t += 5
    d.assign(("x", 0), b"b")  # a backup copy
    d.bye(b"a")
    assert list(d.resend) == [] and d.is_leased(("x", 0))


def test_expired_lease_is_requeued():
    d, clock = make()
    d.ready(b"a", 1)
    d.assign(("x", 0), b"a")
    for _ in range(7):
        clock.t += 10
        d.heard(b"a")  # alive, but the answer never reached the sink
    d.expire()
    assert list(d.resend) == [("x", 0)]


def test_backup_goes_to_an_idle_worker_for_the_oldest_straggler():
    d, clock = make()
    for i in range(5):  # typical tile time 0.2 s
        d.ready(b"fast", 1)
        d.assign(("a", i), b"fast")
        clock.t += 0.2
        d.done(("a", i))
    d.ready(b"slow", 2)
    d.assign(("b", 0), b"slow")
    clock.t += 0.5
    d.assign(("b", 1), b"slow")
    d.ready(b"fast", 1)
    assert d.backup_candidate(b"fast") is None  # not yet late (> max(1 s, 2 × 0.2 s))
    clock.t += 0.6
    assert d.backup_candidate(b"fast") == ("b", 0)
    assert d.backup_candidate(b"slow") is None  # never to a worker that has it already
    d.assign(("b", 0), b"fast")
    d.ready(b"other", 1)
    assert d.backup_candidate(b"other") is None  # ("b", 1) is out only 0.6 s
    clock.t += 0.5
    assert d.backup_candidate(b"other") == ("b", 1)  # ("b", 0) has its two copies


def test_forget_image_releases_every_tile_and_resend_of_it():
    d, _ = make()
    d.ready(b"a", 3)
    d.assign(("x", 0), b"a")
    d.assign(("x", 1), b"a")
    d.resend.append(("x", 2))
    d.resend.append(("y", 0))
    d.forget_image("x")
    assert not d.leases and list(d.resend) == [("y", 0)]


def test_unknown_worker_gets_credit_from_its_heartbeat():
    d, _ = make()
    d.heard(b"w", period=1.0, free=3)
    assert d.workers[b"w"].credit == 3
    d.heard(b"w", free=9)  # known: its credit is not reset by a heartbeat
    assert d.workers[b"w"].credit == 3


def test_a_heartbeat_before_the_first_ready_does_not_count_the_free_slots_twice():
    """A worker that heartbeats (4 free) and then sends its first Ready (its 4 requests)
    offers the same four slots twice: it gets 4 tiles, not 8."""
    d, _ = make()
    d.heard(b"w", period=1.0, free=4, held=0)
    d.ready(b"w", 4)
    assert d.workers[b"w"].credit == 4
    d.ready(b"w", 1)  # from now on each Ready is a finished tile: one more
    assert d.workers[b"w"].credit == 5


def test_after_a_ventilator_restart_a_busy_worker_keeps_its_free_slots_and_each_finish():
    """The case heartbeat credit is for: the worker's credit went to a ventilator that
    restarted. Its free slots come from the heartbeat, and every Ready after it (a tile of
    the old ventilator or of this one finished) adds one."""
    d, _ = make()
    d.heard(b"w", period=1.0, free=2, held=2)  # 2 tiles of the old ventilator in flight
    assert d.workers[b"w"].credit == 2
    d.assign(("x", 0), b"w")
    d.assign(("x", 1), b"w")
    for _ in range(4):  # the two old tiles and the two new ones done
        d.ready(b"w", 1)
    assert d.workers[b"w"].credit == 4


def test_after_a_ventilator_restart_an_idle_worker_is_credited_by_its_heartbeat_alone():
    d, _ = make()
    d.heard(b"w", period=1.0, free=3, held=0)
    for i in range(3):
        d.assign(("x", i), b"w")
    d.ready(b"w", 1)  # a tile of this ventilator done: one more, not a repeat of the 3
    assert d.workers[b"w"].credit == 1
