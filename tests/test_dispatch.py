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


# ---------------------------------------------------------------------------- greedy workers


def test_credit_is_capped_by_what_the_worker_can_hold():
    """Before: Ready(1000000) was a million credits (the greedy worker took the job)."""
    from zmqvision.dispatch import CREDIT_MARGIN, MAX_WORKER_CREDIT

    d, _ = make()
    d.ready(b"g", 1_000_000)
    assert d.workers[b"g"].credit == MAX_WORKER_CREDIT  # no heartbeat yet: the absolute cap
    d.heard(b"g", period=1.0, free=0, requests=4)
    assert d.workers[b"g"].credit == 4 + CREDIT_MARGIN
    d.ready(b"g", 1_000_000)
    assert d.workers[b"g"].credit == 4 + CREDIT_MARGIN
    d.heard(b"h", period=1.0, free=1_000_000, requests=1_000_000)  # lies in its heartbeat
    assert d.workers[b"h"].credit == MAX_WORKER_CREDIT


def test_an_honest_worker_keeps_every_credit():
    d, clock = make()
    d.ready(b"a", 4)
    d.heard(b"a", period=1.0, free=4, requests=4)
    for i in range(100):
        key = ("img", i)
        d.assign(key, d.pick_worker())
        clock.t += 0.05
        d.ready(b"a", 1)  # finished: its Ready comes before the sink's ack
        d.done(key)
    assert d.workers[b"a"].credit == 4 and d.quarantined == 0


def _hoarding():
    d, clock = make()
    for wid in (b"g", b"a"):
        d.heard(wid, period=1.0, requests=2)
        d.ready(wid, 4)
    greedy = [("img", i) for i in range(4)]
    for key in greedy:
        d.assign(key, b"g")
    for i in range(4, 8):
        d.assign(("img", i), b"a")
    return d, clock, greedy


def test_a_worker_that_takes_tiles_and_returns_none_is_quarantined():
    """Before: its tiles waited for the 120 s lease, then it was given the re-sent tiles."""
    from zmqvision.dispatch import HOARD_MIN_S

    d, clock, greedy = _hoarding()
    for i in range(4, 8):  # the other worker finishes its tiles, 0.05 s each
        clock.t += 0.05
        d.done(("img", i))
        d.heard(b"g")
        d.ready(b"a", 1)
    assert d.expire() == [] and d.quarantined == 0  # not long enough yet
    clock.t += HOARD_MIN_S
    d.heard(b"g")  # it still heartbeats: not dead
    d.heard(b"a")
    assert d.expire() == []
    assert d.quarantined == 1
    assert list(d.resend) and set(d.resend) == set(greedy)  # its tiles go to others
    assert all(not d.is_leased(k) for k in greedy)
    d.ready(b"g", 1_000_000)
    assert d.pick_worker() == b"a"  # the quarantined worker gets nothing
    d.workers[b"a"].credit = 0
    assert d.pick_worker() is None


def test_quarantine_ends_and_a_repeat_doubles_it():
    from zmqvision.dispatch import QUARANTINE_S

    d, clock, _ = _hoarding()
    for i in range(4, 8):
        d.done(("img", i))
    clock.t += 5.0
    for wid in (b"g", b"a"):
        d.heard(wid)
    d.expire()
    slot = d.workers[b"g"]
    assert slot.quarantined_until == clock.t + QUARANTINE_S
    clock.t = slot.quarantined_until + 0.1
    for wid in (b"g", b"a"):
        d.heard(wid)
    d.workers[b"a"].credit = 0
    d.ready(b"g", 1)
    assert d.pick_worker() == b"g"  # forgiven: it may work again
    d.assign(("img", 9), b"g")
    d.ready(b"a", 1)
    d.assign(("img", 11), b"a")
    d.done(("img", 11))
    clock.t += 5.0
    for wid in (b"g", b"a"):
        d.heard(wid)
    d.expire()
    assert slot.quarantines == 2
    assert slot.quarantined_until == clock.t + 2 * QUARANTINE_S


def test_a_slow_worker_that_finishes_tiles_is_not_a_hoarder():
    d, clock = make()
    for wid in (b"slow", b"fast"):
        d.heard(wid, period=1.0, requests=2)
        d.ready(wid, 2)
    n = 0
    for step in range(200):  # fast: a tile every 0.05 s; slow: one every 2 s
        clock.t += 0.05
        for wid in (b"slow", b"fast"):
            d.heard(wid)
            while d.workers[wid].credit:
                d.assign(("img", n), wid)
                n += 1
        fast_key = next(iter(d.workers[b"fast"].leases))
        d.done(fast_key)
        d.ready(b"fast", 1)
        if step % 40 == 39:
            d.done(next(iter(d.workers[b"slow"].leases)))
            d.ready(b"slow", 1)
        d.expire()
    assert d.quarantined == 0


def test_nobody_else_finishing_is_no_proof_of_hoarding():
    """A lone worker (or all workers stuck on a slow model) is left to its lease."""
    d, clock = make()
    d.heard(b"a", period=1.0, requests=2)
    d.ready(b"a", 2)
    d.assign(("img", 0), b"a")
    clock.t += 30
    d.heard(b"a")
    d.expire()
    assert d.quarantined == 0 and d.is_leased(("img", 0))


def test_readies_without_results_buy_no_more_tiles():
    """Before: each Ready(1000000) was another helping, however many tiles it held."""
    from zmqvision.dispatch import HOLD_FACTOR, MAX_WORKER_HELD

    d, _ = make()
    n = 0
    for _ in range(50):
        d.ready(b"g", 1_000_000)
        while d.pick_worker() == b"g":
            d.assign(("img", n), b"g")
            n += 1
    assert n == MAX_WORKER_HELD
    d.heard(b"h", period=1.0, requests=2)
    for _ in range(50):
        d.ready(b"h", 1_000_000)
        while d.pick_worker() == b"h":
            d.assign(("img", n), b"h")
            n += 1
    assert len(d.workers[b"h"].leases) == HOLD_FACTOR * (2 + 2)


def test_a_worker_back_from_silence_is_not_credited_the_room_its_old_tiles_take():
    """Declared dead while holding a whole image (weight 6), a worker that was only stalled
    still gets those tiles; its next heartbeat, built before they came, says 4 requests
    free. Seeding 4 would let this ventilator send beyond the worker's credit (answered
    ``beyond_credit``): the old tiles' weight is taken off the seed, and the Readies they
    earn later are new credit."""
    d, clock = make()
    d.heard(b"a", period=0.5, requests=4)
    d.ready(b"a", 4)
    d.assign(("big", 0), b"a", weight=6)
    clock.t += 2.0
    assert d.expire() == [b"a"] and set(d.resend) == {("big", 0)}
    d.heard(b"a", period=0.5, free=4, held=0, requests=4)  # back, its old beat's word
    assert d.workers[b"a"].credit == 0 and d.pick_worker() is None
    d.ready(b"a", 6)  # the image's tiles finished: their credit is the worker's to give
    assert d.workers[b"a"].credit == d.workers[b"a"].credit_cap
    # One that held nothing when it went silent is seeded as before.
    d.heard(b"b", period=0.5, requests=4)
    clock.t += 2.0
    d.heard(b"a", period=0.5)
    assert d.expire() == [b"b"]
    d.heard(b"b", period=0.5, free=3, requests=4)
    assert d.workers[b"b"].credit == 3
