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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import zmq

from zmqvision import protocol, sockets
from zmqvision.worker import send

_TILES = (protocol.MsgType.TILE, protocol.MsgType.IMAGE_WORK, protocol.MsgType.TRAIN_INVITE)


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
        self.waiting_for_room: set[int] = set()  # owed, and polled for room (POLLOUT)
        self.bad = sockets.BadMessages(f"worker {worker_id}")
        # A Ready's frames by credit: the same few (1 … requests) go out once per tile, and
        # encoding one (a dataclass to a dict to msgpack) costs more than sending it.
        self._ready_frames: dict[int, list] = {}

    def connect(self) -> None:
        for d, endpoint in zip(self.dealers, self.endpoints, strict=True):
            d.connect(endpoint)

    def tiles(self, src: int) -> Iterator[protocol.Tile | protocol.ImageWork]:
        """The tiles (and whole images) ventilator ``src`` has sent that are ready now
        (call after a poll)."""
        for _, tile in sockets.receive(self.dealers[src], self.bad, _TILES):
            yield tile

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
        if send.try_send(self.dealers[src], self._ready(self.owed[src])):
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
