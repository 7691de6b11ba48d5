"""The tile link: one DEALER per ventilator, tiles in; credit, heartbeats and Bye out.

Credit (``Ready``) is never dropped. A Ready that finds its pipe full (the ventilator is
not reading) is owed, summed with the next, and sent as soon as the pipe has room: the
poller then also watches that socket for room. A lost Ready would be a slot the ventilator
never fills again. Owed credit also goes before any heartbeat on its socket, so a
ventilator always hears a worker's Ready before its first heartbeat (a heartbeat first
would make it seed credit from the heartbeat's free slots: see ``dispatch.Dispatcher``).

Credit freed while the loop works is only owed (``owe``) and goes out in one Ready per
ventilator when the loop is done with what woke it (``send_owed``, before it polls
again): tiles finished together cost one message, not one each. Credit is still never
held while the loop waits, so a worker with free slots has always told its ventilator.

A tile that does not decode was still sent on a credit (docs/protocol.md, worker step 4):
its credit comes back too, and when its header names it the loop answers it ``bad_tile``
(``Refused``), else it would cost its ventilator one credit for good. Only what was sent
on credit earns it back: the link counts what each ventilator may still send
(``unspent``: credit sent, less the tiles received), and a message that does not decode
arriving when none is left was not sent on credit (a ventilator sends only once it has
heard the Ready), so it is dropped with nothing back. A ventilator that floods a worker
with garbage cannot so make it promise more tiles than it can hold.

Good tiles are held to credit as well (``Refused``, ``beyond_credit``). An honest ventilator sends a
message only while it has a tile of credit left, so one arrives with ``unspent`` >= 1
(a whole image then takes it down by its tile count, to 1 - tiles at least). A tile or
image that arrives with ``unspent`` below ``1 - margin`` was sent beyond credit: it is not
queued (a ventilator that ignores credit, by bug or on purpose, would otherwise grow the
worker's queue without bound and starve other ventilators' jobs), it is answered
``beyond_credit`` for each of its tiles so its image's record is an error, not a silent
loss, and it earns no credit back. So a worker holds at most ``margin`` tiles beyond what
it granted a ventilator, plus one whole image's weight less one.

The ``margin`` (the worker's requests + ``dispatch.CREDIT_MARGIN``: the most credit a
ventilator may hold) covers the one way an honest ventilator's books run ahead of the
worker's: a ventilator that declares the worker dead (a stalled loop) while tiles it sent
are still on their way forgets them, and seeds the worker's credit again from its next
heartbeat, built before those tiles arrived (``dispatch.Dispatcher.heard``).
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import zmq

from zmqvision import protocol, sockets
from zmqvision.dispatch import CREDIT_MARGIN

log = logging.getLogger("zmqvision.worker")

_TILES = (protocol.MsgType.TILE, protocol.MsgType.IMAGE_WORK, protocol.MsgType.TRAIN_INVITE)
# Sent on the tile link without credit (every 0.5 s until answered): a bad one earns none.
_NO_CREDIT_TAG = protocol.MsgType.TRAIN_INVITE.value.encode()
_REASON_CHARS = 500  # of a decode error, in a bad tile's answer
BAD_TILE = "bad_tile"  # the error a named tile that did not decode is answered with
BEYOND_CREDIT = "beyond_credit"  # the error a tile sent beyond credit is answered with


@dataclass(frozen=True)
class Refused:
    """Tiles the link will not queue, named for the loop to answer each with ``error``:
    one tile, or each tile of a whole image (``indices``). ``bad_tile``: sent on credit,
    its message did not decode but its header names it; each answer gives its credit
    back, as any answer does. ``beyond_credit``: it decoded but came beyond the credit its
    ventilator was given (and the margin); no credit back, since none was spent on it."""

    job: str
    image: str
    indices: range
    attempt: int
    error: str  # BAD_TILE or BEYOND_CREDIT
    reason: str
    credit_back: bool


class TileLink:
    """The worker's DEALER sockets to its ventilators and the credit it owes each."""

    def __init__(self, ctx: zmq.Context, endpoints: Sequence[str], worker_id: str,
                 poller: zmq.Poller, first_credit: int) -> None:
        self.endpoints = list(endpoints)
        self.worker_id = worker_id
        self.dealers: list[zmq.Socket] = []
        for _ in self.endpoints:
            d = sockets.make_socket(ctx, zmq.DEALER, rcvhwm=100, sndhwm=1000,
                                    maxmsgsize=64 << 20)
            d.setsockopt(zmq.ROUTING_ID, worker_id.encode())
            self.dealers.append(d)
        self.poller = poller
        for d in self.dealers:
            poller.register(d, zmq.POLLIN)
        # The first Ready (every request) is owed to each ventilator until it is sent.
        self.owed = [first_credit] * len(self.dealers)
        # Tiles each ventilator may still send on credit: Readies sent, less tiles received
        # (a whole image weighs its tiles, so this may go below zero).
        self.unspent = [0] * len(self.dealers)
        self.beyond_credit = 0  # bad messages that came with no credit left: nothing back
        # Good tiles (a whole image: its tiles) sent beyond credit and the margin: answered
        # beyond_credit, not queued, nothing back (see the module doc).
        self.tiles_beyond_credit = 0
        self._refusals = 0  # messages refused so, for the rate-limited log
        self.margin = first_credit + CREDIT_MARGIN
        self._bad_tiles: deque[Refused] = deque()
        self.waiting_for_room: set[int] = set()  # owed, and polled for room (POLLOUT)
        self.bad = sockets.BadMessages(f"worker {worker_id}")
        self._receivers = [
            sockets.Receiver(d, self.bad, _TILES, refused=functools.partial(self._refused, src))
            for src, d in enumerate(self.dealers)]
        # A Ready's frames by credit: the same few (1 … requests) go out once per tile, and
        # encoding one (a dataclass to a dict to msgpack) costs more than sending it.
        self._ready_frames: dict[int, list] = {}

    def connect(self) -> None:
        for d, endpoint in zip(self.dealers, self.endpoints, strict=True):
            d.connect(endpoint)

    def tiles(self, src: int) -> Iterator[protocol.Tile | protocol.ImageWork
                                          | protocol.TrainInvite | Refused]:
        """The tiles (and whole images, training invites, tiles that did not decode but
        are named, and tiles sent beyond credit) ventilator ``src`` has sent that are
        ready now, in the order they came (call after a poll)."""
        unspent = self.unspent
        bad = self._bad_tiles
        floor = 1 - self.margin  # the least credit left a tile may come with
        for _, msg in self._receivers[src]():
            while bad:  # refused while receiving, before this one
                yield bad.popleft()
            kind = type(msg)
            if kind is protocol.Tile or kind is protocol.ImageWork:
                if unspent[src] < floor:
                    yield self._beyond(src, msg)
                    continue
                unspent[src] -= 1 if kind is protocol.Tile else len(msg.boxes)
            yield msg
        while bad:
            yield bad.popleft()

    def _beyond(self, src: int, msg: protocol.Tile | protocol.ImageWork) -> Refused:
        """A good tile or image from ``src`` sent beyond its credit: counted, logged
        (rate-limited), and named for the loop to answer."""
        indices = (range(msg.index, msg.index + 1) if type(msg) is protocol.Tile
                   else range(len(msg.boxes)))
        self.tiles_beyond_credit += len(indices)
        self._refusals += 1
        reason = (f"worker {self.worker_id}: the ventilator at {self.endpoints[src]} sent "
                  f"this tile beyond the credit it was given (it already had {-self.unspent[src]} "
                  f"tiles out beyond it, {self.margin} allowed): not run, no credit back")
        if self._refusals <= 10 or self._refusals % 1000 == 0:
            log.warning("%s (#%d; %d tiles so)", reason, self._refusals,
                        self.tiles_beyond_credit)
        return Refused(msg.job, msg.image, indices, msg.attempt, BEYOND_CREDIT, reason,
                       credit_back=False)

    def _refused(self, src: int, frames: Sequence, exc: protocol.ProtocolError) -> None:
        """A message from ``src`` that did not decode (already counted as bad): its credit
        back, with a ``Refused`` (``bad_tile``) for the loop to answer when its header
        names it; nothing when it was not sent on credit."""
        tag = frames[0]
        if len(tag) == len(_NO_CREDIT_TAG) and bytes(tag) == _NO_CREDIT_TAG:
            return
        if self.unspent[src] < 1:
            self.beyond_credit += 1
            if self.beyond_credit <= 10 or self.beyond_credit % 1000 == 0:
                log.warning("worker %s: a bad message beyond its ventilator's credit "
                            "(#%d): no credit back", self.worker_id, self.beyond_credit)
            return
        named = protocol.tile_identity(frames)
        if named is not None:
            job, image, index, attempt = named
            indices = range(index, index + 1)
        else:
            image_work = protocol.image_work_identity(frames)
            if image_work is None:  # nothing to answer: only the credit goes back
                self.unspent[src] -= 1
                self.owed[src] += 1
                return
            job, image, count, attempt = image_work
            indices = range(count)
        self.unspent[src] -= len(indices)
        self._bad_tiles.append(Refused(job, image, indices, attempt, BAD_TILE,
                                       str(exc)[:_REASON_CHARS], credit_back=True))

    def give_credit(self, src: int, n: int = 1) -> None:
        """Owe ``n`` more to ``src`` and send what is owed now."""
        self.owed[src] += n
        self._send_credit(src)

    def owe(self, src: int, n: int = 1) -> None:
        """Owe ``n`` more to ``src``, sent with the rest by the next ``send_owed`` (which
        the loop calls before it waits)."""
        self.owed[src] += n

    def send_owed(self) -> None:
        """Send every owed Ready that has room now."""
        for src, n in enumerate(self.owed):
            if n:
                self._send_credit(src)

    def _send_credit(self, src: int) -> bool:
        """Send what is owed to ``src``; True when nothing is owed any more."""
        if not self.owed[src]:
            return True
        if sockets.try_send(self.dealers[src], self._ready(self.owed[src])):
            self.unspent[src] += self.owed[src]  # the ventilator may spend it from now on
            self.owed[src] = 0
            if src in self.waiting_for_room:
                self.waiting_for_room.discard(src)
                self.poller.register(self.dealers[src], zmq.POLLIN)
            return True
        if src not in self.waiting_for_room:  # the poller wakes the loop when there is room
            self.waiting_for_room.add(src)
            self.poller.register(self.dealers[src], zmq.POLLIN | zmq.POLLOUT)
        return False

    def _ready(self, credit: int) -> list:
        frames = self._ready_frames.get(credit)
        if frames is None:
            frames = protocol.encode(protocol.Ready(self.worker_id, credit))
            if len(self._ready_frames) < 64:  # a backlog's odd sums are not worth keeping
                self._ready_frames[credit] = frames
        return frames

    def beat(self, heartbeat: Sequence) -> None:
        """A heartbeat to every ventilator, each after the credit it is owed."""
        for src, d in enumerate(self.dealers):
            if self._send_credit(src):
                sockets.try_send(d, heartbeat)

    def bye(self) -> None:
        frames = protocol.encode(protocol.Bye(self.worker_id))
        for d in self.dealers:
            sockets.try_send(d, frames)

    def close(self) -> None:
        for d in self.dealers:
            d.close(linger=500)  # long enough for Bye, short enough to never hang
