"""The dispatcher routes by model (issue 21, mixed pools): a tile goes only to a worker
whose heartbeats say it serves the tile's model, and to none before its first heartbeat.
Pure bookkeeping, so a fake clock; the sockets' side is tests/integration/test_mixed_pool.py."""

from __future__ import annotations

from zmqvision import protocol
from zmqvision.dispatch import Dispatcher

DET, REC, OTHER = "centerface@1", "mobilefacenet@1", "ssd@1"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def joined(d: Dispatcher, wid: bytes, credit: int, *models: str) -> None:
    """A worker's Ready, then its first heartbeat naming ``models``."""
    d.ready(wid, credit)
    d.heard(wid, period=1.0, requests=credit, models=models)


def test_a_tile_goes_only_to_a_worker_that_serves_its_model():
    d = Dispatcher(clock=Clock())
    joined(d, b"both", 1, DET, REC)
    joined(d, b"det", 4, DET)
    joined(d, b"other", 8, OTHER)
    assert d.pick_worker(DET) == b"det"  # the most credit among those that serve it
    assert d.pick_worker(REC) == b"both"  # never the detector-only one, whatever its credit
    assert d.pick_worker(OTHER) == b"other"
    assert d.pick_worker("nobody@1") is None
    assert (d.total_credit(DET), d.total_credit(REC), d.total_credit(OTHER)) == (5, 1, 8)
    d.assign(("img", 9), b"both")  # a crop: its only credit
    assert d.pick_worker(REC) is None and d.pick_worker(DET) == b"det"
    assert d.serves(REC) and not d.serves("nobody@1")


def test_a_worker_gets_nothing_before_its_first_heartbeat():
    """Its Ready comes first (docs/protocol.md): until a heartbeat says what it serves,
    no tile of any model goes to it."""
    d = Dispatcher(clock=Clock())
    d.ready(b"w", 4)
    assert d.pick_worker(DET) is None and d.total_credit(DET) == 0
    d.heard(b"w", period=1.0, requests=4, models=(DET,))
    assert d.pick_worker(DET) == b"w" and d.pick_worker(REC) is None


def test_an_old_heartbeat_without_stage2_serves_its_model_only():
    beat = protocol.Heartbeat(worker="w", host="h", pid=1, device="CPU", model=DET,
                              tiles_done=0, tiles_failed=0, tiles_per_s=0.0, in_flight=0,
                              queue=0, uptime=1.0)
    frames = protocol.encode(beat)
    assert protocol.decode(frames).models == (DET,)
    two = protocol.decode(protocol.encode(protocol.Heartbeat(**{**beat.__dict__,
                                                                "stage2": REC})))
    assert two.stage2 == REC and two.models == (DET, REC)


def test_workers_leave_their_groups():
    clock = Clock()
    d = Dispatcher(clock=clock)
    joined(d, b"a", 2, DET, REC)
    joined(d, b"b", 2, DET)
    d.bye(b"a")
    assert not d.serves(REC) and d.pick_worker(DET) == b"b"
    clock.t += 10.0  # b falls silent: dead, and out of its group
    d.expire()
    assert not d.serves(DET) and d.serving == {}


def test_a_heartbeat_naming_other_models_moves_the_worker():
    d = Dispatcher(clock=Clock())
    joined(d, b"w", 2, DET, REC)
    d.heard(b"w", models=(OTHER,))  # believed from now on, for routing only
    assert d.pick_worker(DET) is None and d.pick_worker(OTHER) == b"w"
    assert set(d.serving) == {OTHER}


def test_backups_go_only_to_a_worker_of_the_tiles_model():
    clock = Clock()
    d = Dispatcher(clock=clock)
    joined(d, b"slow", 2, DET, REC)
    joined(d, b"det", 2, DET)
    d.assign(("img", 0), b"slow")
    d.assign(("img", 5), b"slow")  # a crop
    clock.t += 5.0
    crops = {("img", 5)}
    assert d.backup_candidate(b"det", lambda k: k not in crops) == ("img", 0)
    d.assign(("img", 0), b"det")
    assert d.backup_candidate(b"det", lambda k: k not in crops) is None


def test_one_model_picks_as_before():
    """The common case: one group, the same choice as picking among all workers."""
    d = Dispatcher(clock=Clock())
    for wid, credit in ((b"a", 1), (b"b", 3), (b"c", 3)):
        joined(d, wid, credit, DET)
    d.assign(("img", 0), b"b")
    for index in range(1, 7):
        wid = d.pick_worker(DET)
        assert wid == d.pick_worker()
        d.assign(("img", index), wid)
    assert d.pick_worker(DET) is None
