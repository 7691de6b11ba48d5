"""The ventilator's two links: to the workers (a ROUTER their DEALERs connect to) and to
the sink (a PUSH for announcements, a SUB for its acks, progress and records).

Each link owns its sockets and turns what arrives into state (``Dispatcher`` credit and
liveness; the sink's identity) or into messages for the engine, through the one receive
loop every role shares (``sockets.receive``). Neither knows about jobs or images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import zmq

from zmqvision import protocol, sockets
from zmqvision.dispatch import Dispatcher, TileKey

log = logging.getLogger("zmqvision.ventilator")

_FROM_WORKERS = (protocol.MsgType.READY, protocol.MsgType.HEARTBEAT, protocol.MsgType.BYE)
_FROM_SINK = (protocol.MsgType.PROGRESS, protocol.MsgType.JOB_DONE, protocol.MsgType.SINK_STATUS,
              protocol.MsgType.ACK, protocol.MsgType.RECORD, protocol.MsgType.OBJECTS)


def peer_address(frame: zmq.Frame) -> str:
    """The address ZeroMQ reports a message came from; "" where it has none (ipc,
    inproc, or a frame that no longer knows its connection)."""
    try:
        return frame.get("Peer-Address") or ""
    except zmq.ZMQError:
        return ""


def is_local_peer(frame: zmq.Frame, endpoint: str | None) -> bool:
    """Whether a message came from this host: over ipc or inproc, or over tcp from a
    loopback address (what ZeroMQ reports as the frame's Peer-Address)."""
    if endpoint is None or not endpoint.startswith("tcp://"):
        return True
    addr = peer_address(frame)
    return addr in ("", "::1", "localhost") or addr.startswith(("127.", "::ffff:127."))


class WorkerLink:
    """Workers' credit, heartbeats and goodbyes in; tiles out, each to a worker with credit
    that serves the tile's model (its heartbeats say which: ``Dispatcher.pick_worker``).

    How work travels to a worker is chosen once, from its first message: raw pixels to a
    worker on this host, whole images (their file bytes, ``ImageWork``) to one elsewhere
    (``wire="auto"``); an image that cannot go whole (no file bytes: an array, a video
    frame; or a file too heavy per tile) goes to such a worker as JPEG tiles."""

    def __init__(self, ctx: zmq.Context, *, wire: str, lease_s: float,
                 bad: sockets.BadMessages) -> None:
        if wire not in ("auto", *protocol.WIRE_MODES):
            raise ValueError(f"unknown wire encoding {wire!r}")
        self.router = sockets.make_socket(ctx, zmq.ROUTER, sndhwm=1000, linger=2000,
                                          maxmsgsize=1 << 20)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.dispatch = Dispatcher(lease_s=lease_s)
        self.wire = wire
        self.bad = bad
        self.endpoint: str | None = None
        self.tiles_sent = 0  # every send, copies included

    def bind(self, endpoint: str) -> str:
        self.endpoint = sockets.bind(self.router, endpoint)
        return self.endpoint

    def receive(self) -> None:
        for peer, msg in sockets.receive(self.router, self.bad, _FROM_WORKERS, routed=True):
            wid = peer.bytes
            if isinstance(msg, protocol.Ready):
                self.dispatch.ready(wid, msg.credit)
            elif isinstance(msg, protocol.Heartbeat):
                free = max(0, msg.requests - msg.in_flight - msg.queue)
                self.dispatch.heard(wid, period=msg.period, free=free,
                                    held=msg.in_flight + msg.queue, requests=msg.requests,
                                    models=msg.models).model = msg.model
            else:
                self.dispatch.bye(wid)
            slot = self.dispatch.workers.get(wid)
            if slot is not None:
                slot.name = msg.worker
            if slot is not None and slot.encoding is None:  # its first message
                slot.address = peer_address(peer)
                slot.encoding = (self.wire if self.wire != "auto" else
                                 "raw" if is_local_peer(peer, self.endpoint) else "image")
                log.info("worker %s (%s): tiles as %s", wid.decode(errors="replace"),
                         peer_address(peer) or "local", slot.encoding)

    def encoding(self, wid: bytes) -> str:
        slot = self.dispatch.workers.get(wid)
        return (slot.encoding if slot is not None else None) or "raw"

    def send(self, wid: bytes, key: TileKey, msg: protocol.Tile | protocol.ImageWork,
             backup: bool, weight: int = 1) -> bool:
        """Lease a tile (or a whole image of ``weight`` tiles) to a worker and send it;
        False (and it queued again) when the worker is gone or its pipe is full."""
        self.lease(wid, key, backup, weight)
        return self.transmit(wid, msg)

    def lease(self, wid: bytes, key: TileKey, backup: bool, weight: int = 1) -> None:
        """The first half of a send: the lease, taken before the message is made (tiles
        encoded on a thread pool are leased as they are picked, sent in that order)."""
        self.dispatch.assign(key, wid, weight)
        if backup:
            self.dispatch.note_backup()

    def transmit(self, wid: bytes, msg: protocol.Tile | protocol.ImageWork) -> bool:
        """The second half: the message to a worker whose lease is taken. A worker gone
        meanwhile (its leases already queued again) is skipped."""
        if wid not in self.dispatch.workers:
            return False
        try:
            self.router.send_multipart([wid, *protocol.encode(msg)], flags=zmq.NOBLOCK,
                                       copy=False)
        except zmq.ZMQError:  # EHOSTUNREACH: the worker is gone; EAGAIN: its pipe is full
            self.dispatch.lost(wid)  # its leases, this one included, go out again
            return False
        self.tiles_sent += 1
        return True

    def close(self) -> None:
        self.router.close()


class SinkLink:
    """Announcements to the sink (PUSH, never dropped: sends wait for room) and what the
    sink publishes for ventilators (SUB). Notices a restarted sink by its new id."""

    def __init__(self, ctx: zmq.Context, *, bad: sockets.BadMessages) -> None:
        self.push = sockets.make_socket(ctx, zmq.PUSH, sndhwm=100_000, linger=5000)
        self.events = sockets.make_socket(ctx, zmq.SUB, rcvhwm=100_000,
                                          maxmsgsize=protocol.MAX_RECORD_BYTES + (1 << 20))
        for t in _FROM_SINK:
            self.events.setsockopt(zmq.SUBSCRIBE, t.tag)
        self.bad = bad
        self.sink_id: str | None = None
        self.last_heard: float | None = None
        self.events_endpoint: str | None = None

    def connect(self, sink: str, events: str) -> None:
        self.events_endpoint = events
        self.events.connect(events)
        self.push.connect(sink)

    def send(self, msg, stop: sockets.StopFlag | None,
             while_waiting: Callable[[], None] | None = None) -> bool:
        """Queue one announcement; False if stopped before there was room."""
        return sockets.send_blocking(self.push, protocol.encode(msg), stop,
                                     while_waiting=while_waiting)

    def receive(self) -> Iterator[tuple[protocol.Message, str | None]]:
        """``(message, previous sink id)`` for what the sink published; the previous id
        is set when the message comes from another sink than before (it restarted)."""
        for _, msg in sockets.receive(self.events, self.bad, _FROM_SINK):
            self.last_heard = time.monotonic()
            sink = getattr(msg, "sink", None)
            restarted = None
            # The first word from a sink may be an ack, before its first status: adopt its
            # id then (dropping those acks stalled fast jobs until leases ran out).
            if sink is not None:
                if self.sink_id is not None and sink != self.sink_id:
                    restarted = self.sink_id
                self.sink_id = sink
            yield msg, restarted

    def close(self) -> None:
        self.push.close()
        self.events.close(linger=0)
