"""Who gets which tile, and what must be sent again. Pure bookkeeping, no sockets.

The ventilator is a load-balancing dispatcher (ZeroMQ guide, chapter 3) with leases
(chapter 4's Paranoid Pirate, MapReduce's backup tasks):

- *Credit*: a worker announces how many tiles it can take (``Ready``); a tile goes only to
  a worker with credit left. A fast worker asks again sooner, so load follows speed, and a
  slow worker never holds a queue of tiles hostage.
- *Leases*: every tile sent is leased to its worker until the sink acknowledges it. A
  worker silent for ``dead_periods`` of its heartbeat period is dead: its leases go back to
  the front of the queue. A lease older than ``lease_s`` (results lost on the way) is
  requeued too.
- *Backup tasks*: when there is nothing new to send and a worker has credit, the oldest
  tile still out (longer than twice the typical tile time) is sent to it as well. The sink
  merges whichever answer comes first and ignores the other.
- *Capped credit*: a worker's credit is never more than its heartbeat says it can hold
  (``requests``) plus ``CREDIT_MARGIN``, nor more than ``MAX_WORKER_CREDIT`` (before its
  first heartbeat too). An honest worker's credit is its idle requests, so the cap never
  binds it; a ``Ready(1000000)`` gets a handful of tiles, not the job. Nor may a worker
  hold (leased, not acknowledged by the sink) more than ``HOLD_FACTOR`` times that cap
  (``MAX_WORKER_HELD`` at most), so Readies repeated without results buy no more tiles.
  The factor leaves room for the tiles an honest worker has finished whose acks are on
  their way (the sink acks every 0.1 s): it waits for them rather than losing credit.
- *Quarantine*: a worker that holds tiles and has had none of them done for
  ``HOARD_FACTOR`` typical tile times (at least ``HOARD_MIN_S``), while other workers did
  finish tiles meanwhile, is hoarding (a greedy or wedged worker that still heartbeats):
  its tiles are taken back and sent to others, its credit is dropped, and it gets nothing
  for ``QUARANTINE_S`` (doubled at each repeat), long before the lease (``lease_s``) would
  have run out.
- *Models*: a worker serves the models its heartbeats name (its own, and its second
  stage's: ``Heartbeat.models``), and a tile goes only to a worker that serves the tile's
  model (``pick_worker(model)``): a stage-1 tile the job's, a stage-2 crop the second
  stage's. Slots are kept grouped by model (``serving``), so picking among one model's
  workers costs what picking among all did. A worker is in no group before its first
  heartbeat (its first Ready comes before it): it gets nothing until it has said what it
  serves. What it claims is not trusted beyond routing: a tile it answers
  ``model_mismatch`` anyway is that tile's error at the sink, as before.
- *Whole images* (``--wire image``): an image sent whole is one lease ``(image, IMAGE)``
  that weighs its tile count against the worker's credit and hold cap (credit is in
  tiles, so a worker given a 48-tile image gets nothing more until its Readies repay
  them, and images of different sizes balance fairly). It needs only one tile of credit
  to go (an image is never split), so credit may go below zero. Each of its tiles the
  sink acknowledges lightens it by one (and counts as progress against hoarding); the
  image's record releases it; a dead worker's image is sent again whole.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("zmqvision.dispatch")

TileKey = tuple[str, int]  # (image id, tile index)
# The index of a whole image's lease (``--wire image``: one ImageWork, weighing its tiles).
IMAGE = -1

CREDIT_MARGIN = 2  # credit above a worker's announced requests (tiles queued at it)
MAX_WORKER_CREDIT = 64  # credit one worker may have at most, whatever it announces
HOARD_FACTOR = 10.0  # typical tile times a worker may hold tiles with none done
HOARD_MIN_S = 3.0  # ... and never less than this (a slow worker is not a hoarder)
HOLD_FACTOR = 4  # tiles held at most: this many times the credit cap ...
MAX_WORKER_HELD = 128  # ... and never more than this
QUARANTINE_S = 30.0  # first quarantine; each repeat doubles it
MAX_PERIOD_S = 30.0  # a heartbeat period longer than this counts as this
MAX_SILENCED = 1024  # workers declared dead whose held tiles are remembered (see expire)


@dataclass
class WorkerSlot:
    wid: bytes
    last_heard: float
    period: float = 1.0
    credit: int = 0
    leases: set[TileKey] = field(default_factory=set)
    heavy: int = 0  # tiles held beyond one per lease: whole images' weight (see IMAGE)
    assigned: int = 0  # tiles ever sent to it; ties go to the least used worker
    encoding: str | None = None  # how tiles travel to it (the ventilator decides once)
    # Credit its first heartbeat gave it, not yet matched by a Ready, and the tiles it held
    # then (finishing those brings Readies that are new credit): see Dispatcher.ready.
    seeded: int = 0
    held_at_seed: int = 0
    requests: int = 0  # infer requests its heartbeat announces (0: no heartbeat yet)
    name: str = ""  # the worker id its messages carry, for the log
    model: str = ""  # the model its heartbeats name (``name@version``; "" before the first)
    # The models whose tiles it may be sent (its heartbeat's ``models``); () before its
    # first heartbeat: nothing.
    models: tuple[str, ...] = ()
    address: str = ""  # where it connects from, for the log
    progress_at: float = 0.0  # when it last had a tile done, or began holding tiles
    quarantined_until: float = 0.0
    quarantines: int = 0

    @property
    def credit_cap(self) -> int:
        if self.requests <= 0:
            return MAX_WORKER_CREDIT
        return min(MAX_WORKER_CREDIT, self.requests + CREDIT_MARGIN)

    def cap_credit(self) -> None:
        self.credit = min(self.credit, self.credit_cap)

    @property
    def available(self) -> int:
        """Tiles it may be sent now: its credit, within what it may hold."""
        held_cap = min(MAX_WORKER_HELD, HOLD_FACTOR * self.credit_cap)
        return min(self.credit, held_cap - len(self.leases) - self.heavy)


@dataclass
class Lease:
    holders: dict[bytes, float]  # worker → when the tile was sent to it
    first_sent: float
    weight: int = 1  # tiles it stands for still unacknowledged (a whole image: several)


class Dispatcher:
    def __init__(
        self,
        *,
        dead_periods: float = 3.0,
        lease_s: float = 120.0,
        max_copies: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dead_periods = dead_periods
        self.lease_s = lease_s
        self.max_copies = max_copies
        self.clock = clock
        self.workers: dict[bytes, WorkerSlot] = {}
        # The same slots by the models they serve (a slot is in one group per model).
        self.serving: dict[str, dict[bytes, WorkerSlot]] = {}
        # Workers declared dead by silence, and the tiles they held then: if one was only
        # stalled, those tiles still reach it (or are in its queue) while this ventilator
        # has forgotten them, so its next heartbeat's free requests overstate its room.
        self._silenced: dict[bytes, int] = {}
        self.leases: dict[TileKey, Lease] = {}
        self.by_image: dict[str, set[int]] = {}
        self.resend: deque[TileKey] = deque()
        self.durations: deque[float] = deque(maxlen=200)
        self.requeued = 0  # tiles sent again because their worker died or the lease ran out
        self.backups_sent = 0
        self.last_done_at = float("-inf")  # when any tile was last done
        # ... and by whom (None: a tile with copies out, or none yet). A worker whose own
        # tile was the last done has seen nobody else finish since (a lone worker, say):
        # the times alone cannot tell, they are equal.
        self.last_done_by: bytes | None = None
        self.quarantined = 0  # workers put in quarantine, repeats included

    # ------------------------------------------------------------------ workers

    def heard(self, wid: bytes, *, period: float | None = None,
              free: int | None = None, held: int = 0, requests: int | None = None,
              models: tuple[str, ...] | None = None) -> WorkerSlot:
        """Any message from a worker. ``free`` (from a heartbeat: its idle infer requests)
        seeds the credit of a worker not seen before, e.g. one whose credit went to a
        ventilator that restarted: it only heartbeats to this one until it is given tiles.
        ``held``: the tiles it held at that heartbeat (in flight or queued). ``requests``
        (a heartbeat's): what it can hold at most, which caps its credit. ``models`` (a
        heartbeat's): the models it serves, which decide the tiles it may be sent."""
        now = self.clock()
        slot = self.workers.get(wid)
        if slot is None:
            # A worker back from silence: the tiles it held when declared dead take the
            # room its heartbeat may still call free (and their Readies are explained).
            owed = self._silenced.pop(wid, 0)
            seed = min(max(0, (free or 0) - owed), MAX_WORKER_CREDIT)
            slot = self.workers[wid] = WorkerSlot(wid, now, credit=seed, seeded=seed,
                                                  held_at_seed=max(0, held) + owed)
        slot.last_heard = now
        if period:
            slot.period = min(period, MAX_PERIOD_S)  # a claimed day-long beat keeps no slot
        if requests:
            slot.requests = requests
            slot.cap_credit()
        if models is not None and models != slot.models:
            self._regroup(slot, models)
        return slot

    def _regroup(self, slot: WorkerSlot, models: tuple[str, ...]) -> None:
        """File the slot under the models it serves now (its first heartbeat; a worker
        whose heartbeat names other models than before is believed from then on)."""
        self._ungroup(slot)
        slot.models = models
        for model in models:
            self.serving.setdefault(model, {})[slot.wid] = slot

    def _ungroup(self, slot: WorkerSlot) -> None:
        for model in slot.models:
            group = self.serving.get(model)
            if group is not None:
                group.pop(slot.wid, None)
                if not group:
                    del self.serving[model]

    def serves(self, model: str) -> bool:
        """Whether some worker heard from serves ``model`` (quarantined or busy alike)."""
        return model in self.serving

    def ready(self, wid: bytes, credit: int) -> None:
        """``credit`` more tiles may go to the worker: its requests when it connects, one
        for each tile it finished.

        A worker whose credit came from its heartbeat may still send its connect-time Ready
        (a worker that heartbeats first): that Ready offers the slots the heartbeat already
        counted. Its first Ready after the seed adds only what tiles finished can explain
        (those it held then and those sent to it since); the rest repays the seed. A
        worker that restarted its ventilator sends only Readies for finished tiles, which
        that always explains, so it keeps its seed and each finish."""
        slot = self.heard(wid)
        if slot.seeded:
            credit -= min(slot.seeded, max(0, credit - slot.held_at_seed - slot.assigned))
            slot.seeded = 0
        slot.credit += credit
        slot.cap_credit()

    def bye(self, wid: bytes) -> None:
        slot = self.workers.get(wid)
        if slot is not None:
            self._remove(slot)

    def _remove(self, slot: WorkerSlot) -> None:
        """The worker is gone (its Bye, a failed send, or silence): out of every group,
        its tiles sent again."""
        del self.workers[slot.wid]
        self._ungroup(slot)
        self._requeue_from(slot)

    def lost(self, wid: bytes) -> None:
        """A send to this worker failed (it is gone): treat it as dead now."""
        self.bye(wid)

    def _slots(self, model: str | None):
        if model is None:
            return self.workers.values()
        group = self.serving.get(model)
        return () if group is None else group.values()

    def pick_worker(self, model: str | None = None) -> bytes | None:
        """The worker a tile of ``model`` goes to: among those that serve it, the one with
        the most tiles available, the least used on a tie; None if none may take one.
        ``model`` None: any worker (a caller that routes no models, such as a test)."""
        best, best_rank = None, None
        now = self.clock()
        for slot in self._slots(model):
            if slot.quarantined_until > now:
                continue
            rank = (slot.available, -slot.assigned)
            if rank[0] > 0 and (best_rank is None or rank > best_rank):
                best, best_rank = slot, rank
        return None if best is None else best.wid

    def total_credit(self, model: str | None = None) -> int:
        """Tiles of ``model`` that may be sent now, its workers together (None: all)."""
        now = self.clock()
        return sum(max(0, s.available) for s in self._slots(model)
                   if s.quarantined_until <= now)

    # ------------------------------------------------------------------ tiles

    def assign(self, key: TileKey, wid: bytes, weight: int = 1) -> None:
        """Lease ``key`` to ``wid``; ``weight``: the tiles it carries (a whole image's)."""
        now = self.clock()
        slot = self.workers[wid]
        slot.credit -= weight
        slot.assigned += weight
        if not slot.leases:
            slot.progress_at = now  # it begins holding tiles: the hoarding clock starts
        slot.leases.add(key)
        lease = self.leases.get(key)
        if lease is None:
            lease = self.leases[key] = Lease({wid: now}, now, weight)
            self.by_image.setdefault(key[0], set()).add(key[1])
        else:
            lease.holders[wid] = now
        slot.heavy += lease.weight - 1

    def is_leased(self, key: TileKey) -> bool:
        return key in self.leases

    def _release(self, key: TileKey) -> Lease | None:
        lease = self.leases.pop(key, None)
        if lease is None:
            return None
        for wid in lease.holders:
            slot = self.workers.get(wid)
            if slot is not None:
                slot.leases.discard(key)
                slot.heavy -= lease.weight - 1
        indices = self.by_image.get(key[0])
        if indices is not None:
            indices.discard(key[1])
            if not indices:
                del self.by_image[key[0]]
        return lease

    def _requeue(self, key: TileKey) -> None:
        self._release(key)
        self.resend.appendleft(key)  # first in line: these are the oldest tiles
        self.requeued += 1

    def done(self, key: TileKey) -> None:
        """The sink has the tile's result: release every copy of it (a tile of an image
        sent whole lightens that image's lease)."""
        if key not in self.leases and key[1] != IMAGE:
            self._lighten((key[0], IMAGE))
            return
        lease = self._release(key)
        if lease is not None:
            now = self.clock()
            if key[1] != IMAGE:  # an image's time is not a tile's
                self.durations.append(now - lease.first_sent)
            self.last_done_at = now
            self.last_done_by = None
            # Its holder did it; of several copies we cannot tell whose answer came, and a
            # hoarder must not pass for busy by the backups others finished for it.
            if len(lease.holders) == 1:
                self.last_done_by = next(iter(lease.holders))
                slot = self.workers.get(self.last_done_by)
                if slot is not None:
                    slot.progress_at = now

    def _lighten(self, key: TileKey) -> None:
        lease = self.leases.get(key)
        if lease is None or lease.weight <= 1:
            return
        lease.weight -= 1
        now = self.clock()
        self.last_done_at = now
        self.last_done_by = next(iter(lease.holders)) if len(lease.holders) == 1 else None
        for wid in lease.holders:
            slot = self.workers.get(wid)
            if slot is not None:
                slot.heavy -= 1
                if len(lease.holders) == 1:
                    slot.progress_at = now

    def forget_image(self, image: str) -> None:
        """The image's record is written: nothing of it needs sending any more."""
        for index in list(self.by_image.get(image, ())):
            self.done((image, index))
        self.resend = deque(k for k in self.resend if k[0] != image)

    def _requeue_from(self, slot: WorkerSlot) -> None:
        before = self.requeued
        for key in list(slot.leases):
            lease = self.leases.get(key)
            if lease is None:
                continue
            lease.holders.pop(slot.wid, None)
            if not lease.holders:  # no other copy is out: send it again
                self._requeue(key)
        slot.leases.clear()
        slot.heavy = 0
        # A dead worker's tiles come back seconds after its last word, not after lease_s.
        log.info("worker %s gone, last heard %.1f s ago: %d tiles sent again",
                 slot.wid.decode(errors="replace"), self.clock() - slot.last_heard,
                 self.requeued - before)

    def expire(self) -> list[bytes]:
        """Declare silent workers dead and requeue their tiles, and requeue leases that ran
        out; returns the workers declared dead."""
        now = self.clock()
        dead = [s for s in self.workers.values()
                if now - s.last_heard > self.dead_periods * s.period]
        for slot in dead:
            held = len(slot.leases) + slot.heavy
            if held:
                if len(self._silenced) >= MAX_SILENCED:  # the oldest first: a dict's order
                    del self._silenced[next(iter(self._silenced))]
                self._silenced[slot.wid] = held
            self._remove(slot)
        for key, lease in list(self.leases.items()):
            if now - max(lease.holders.values()) > self.lease_s:
                self._requeue(key)
        self._quarantine_hoarders(now)
        return [s.wid for s in dead]

    def hoard_s(self) -> float:
        """How long a worker may hold tiles with none of them done (see the module doc)."""
        return max(HOARD_MIN_S, HOARD_FACTOR * self.typical_tile_s())

    def _quarantine_hoarders(self, now: float) -> None:
        limit = self.hoard_s()
        for slot in self.workers.values():
            if (slot.leases and now - slot.progress_at > limit
                    and self.last_done_at >= slot.progress_at
                    and self.last_done_by != slot.wid):  # someone else finished since
                self.quarantine(slot, now)

    def quarantine(self, slot: WorkerSlot, now: float) -> None:
        """Take a hoarding worker's tiles back and send it nothing for a while."""
        seconds = QUARANTINE_S * 2 ** min(slot.quarantines, 6)
        held = len(slot.leases)
        slot.quarantines += 1
        slot.quarantined_until = now + seconds
        slot.credit = 0  # what it claimed is not believed; its next Readies count again
        self._requeue_from(slot)
        self.quarantined += 1
        log.warning("worker %s (%s) held %d tiles for %.1f s with none done while others "
                    "finished theirs: its tiles go to other workers, and it gets none for "
                    "%.0f s (quarantine #%d)", slot.name or slot.wid.hex(),
                    slot.address or "local", held, now - slot.progress_at, seconds,
                    slot.quarantines)

    def typical_tile_s(self) -> float:
        return statistics.median(self.durations) if self.durations else 1.0

    def backup_candidate(self, wid: bytes,
                         fits: Callable[[TileKey], bool] | None = None) -> TileKey | None:
        """The oldest tile out, not already held by ``wid``, still under ``max_copies``
        copies and out for more than twice the typical tile time (and at least 1 s);
        ``fits``: only a tile it accepts (one of a model ``wid`` serves)."""
        now = self.clock()
        threshold = max(1.0, 2.0 * self.typical_tile_s())
        best: tuple[float, TileKey] | None = None
        for key, lease in self.leases.items():
            if (wid in lease.holders or len(lease.holders) >= self.max_copies
                    or key[1] == IMAGE):  # whole images: the lease and liveness bring them
                continue
            age = now - lease.first_sent
            if (age > threshold and (best is None or age > best[0])
                    and (fits is None or fits(key))):
                best = (age, key)
        return None if best is None else best[1]

    def note_backup(self) -> None:
        self.backups_sent += 1
