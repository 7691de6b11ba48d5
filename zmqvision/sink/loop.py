"""``run_sink``: the sink's sockets and its loop; everything else is in ``Sink``.

The events socket is an XPUB in manual mode: a subscription is an incoming message like
any other, and ZeroMQ's PUB stores each one in a trie of about 100 bytes per byte of
topic (a 10 MB subscription cost a PUB 1.1 GB, never released). So subscriptions are
at most ``MAX_SUBSCRIPTION_BYTES`` (MAXMSGSIZE: a bigger one drops its connection) and
only prefixes of our message types are taken into the trie (``protocol.MsgType`` tags, the empty
prefix included); any other topic is counted as a bad message and ignored.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

import zmq

from zmqvision import protocol, security, sockets
from zmqvision.cache import open_cache
from zmqvision.sink.config import SinkConfig
from zmqvision.sink.core import SINK_EXPECTS, Sink
from zmqvision.sink.journal import Journal

log = logging.getLogger("zmqvision.sink")

# A PUB socket drops what it cannot queue for a subscriber. Besides events it carries the
# records of publish jobs (zv.record), which a caller waits for, so its queue is deep
# enough (100,000 messages, records are a few hundred bytes each) that records are not
# dropped under normal load; only a subscriber that stops reading for that long loses any.
PUB_SNDHWM = 100_000
POLL_MS = 50
# After a poll that brought results, the loop lets more gather this long before it polls
# again: a job of small images sends a message or two every few milliseconds, and each
# wake-up of the loop (poll, receive until empty, acks and progress due?) costs more CPU
# than decoding a message. Records and acks wait at most this much longer (acks go out
# every ACK_EVERY_S, 0.1 s, anyway); a stop request still ends the wait at once.
# Only while at least GATHER_BUSY images are in progress: then more results are surely on
# their way and a batch job loses nothing; a lone request (serve, Pool.detect) is answered
# without it (at 1 connection a gather after each image's announcement added up to 20 ms
# to every request, whose result follows it by one inference).
GATHER_S = 0.02
GATHER_BUSY = 8
# What the results port takes: every frame of every message for it is at most a header
# (1 MiB), detection arrays (10,000 boxes: 320 KiB) or a segmentation tile's score map
# (protocol.MAX_SCORES_BYTES, 16 MiB; deeplabv3's are 5.5 MB). ZeroMQ queues messages by
# count, not bytes, so the queue is kept short (the sink drains it at once; senders wait
# on their own side): 1,000 messages per connection.
PULL_MAX_FRAME = max(protocol.MAX_HEADER_BYTES, protocol.MAX_SCORES_BYTES)
PULL_RCVHWM = 1000
# Every frame the events socket receives: subscriptions (1 byte on/off and the topic) and
# the CURVE handshake's commands, which pass through the same limit (INITIATE is about
# 300 bytes with its metadata: 256 refused every CURVE subscriber).
MAX_SUBSCRIPTION_BYTES = 4096
_TOPICS = tuple(t.tag for t in protocol.MsgType)


def run_sink(config: SinkConfig, stop: sockets.StopFlag | None = None,
             on_ready: Callable[[dict], None] | None = None,
             ctx: zmq.Context | None = None) -> int:
    """Serve until ``stop`` is set (or, with ``once``, until the first job completes).

    The results file is locked first (a second writer is refused, naming the holder) and
    only emptied or continued once both sockets are bound, so a sink that cannot start
    changes nothing. ``on_ready`` gets the bound endpoints (``results``, ``events``).
    ``ctx``: a context shared with the ventilator and a worker in this process (inproc
    endpoints); the caller owns it.
    """
    stop = stop or sockets.StopFlag()
    security.exposure({"--bind-results": config.results, "--bind-events": config.events,
                       "--bind-events-fallback": config.events_fallback or ""},
                      config.curve, config.insecure)
    own_ctx = ctx is None
    ctx = ctx if ctx is not None else zmq.Context()
    pull = sockets.make_socket(ctx, zmq.PULL, rcvhwm=PULL_RCVHWM, maxmsgsize=PULL_MAX_FRAME)
    pub = sockets.make_socket(ctx, zmq.XPUB, sndhwm=PUB_SNDHWM,
                              maxmsgsize=MAX_SUBSCRIPTION_BYTES)
    pub.setsockopt(zmq.XPUB_MANUAL, 1)
    sink_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"

    def publish(frames) -> None:
        sockets.try_send(pub, frames, copy=True)

    # One cleanup for every way out, a refused CURVE key or a taken --out included.
    journal = secured = sink = wake = None
    try:
        journal = Journal(config.journal, keep=config.append, embed_file=config.embed_file)
        # Results: ventilators and workers (each message then checked by its key's role);
        # events: every role, watchers included (a SUB can only subscribe).
        secured = security.secure(ctx, config.curve, servers=(
            (pull, (security.VENTILATOR, security.WORKER)), (pub, security.ROLES)))
        sink = Sink(config, publish, sink_id, cache=open_cache(config.cache), journal=journal)
        wake = sockets.WakePipe(stop)  # SIGTERM ends the poll at once
        results_ep = sockets.bind(pull, config.results)
        try:
            events_ep = sockets.bind(pub, config.events)
        except OSError:
            if config.events_fallback is None:
                raise
            events_ep = sockets.bind(pub, config.events_fallback)
            log.warning("%s is taken; publishing events on %s", config.events, events_ep)
        journal.open()  # every check passed: only now is --out emptied or read
        log.info("sink %s: results on %s, events on %s, out %s", sink_id, results_ep,
                 events_ep, config.out)
        if on_ready is not None:
            on_ready({"results": results_ep, "events": events_ep})
        _serve(sink, pull, pub, wake, stop, config)
        return 0
    finally:
        if sink is not None:
            sink.close()
        elif journal is not None:
            journal.close()
        if secured is not None:
            secured.close()
        pull.close(linger=0)
        pub.close(linger=0)
        if own_ctx:
            ctx.term()
        if wake is not None:
            wake.close()


def is_topic(topic: bytes) -> bool:
    """Whether a subscription is one the sink serves: a prefix of a message type's tag."""
    return any(tag.startswith(topic) for tag in _TOPICS)


def take_subscriptions(pub: zmq.Socket, bad: sockets.BadMessages, limit: int = 1000) -> None:
    """Apply the (un)subscriptions waiting on the manual XPUB: each applies to the
    subscriber it came from, so it is set right after it is received."""
    for _ in range(limit):
        try:
            msg = pub.recv(flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return
        if not msg or msg[0] not in (0, 1):
            bad(protocol.ProtocolError(f"not a subscription on the events socket "
                                       f"({len(msg)} bytes)"))
            continue
        topic = msg[1:]
        if not is_topic(topic):
            bad(protocol.ProtocolError(f"a subscription to {topic[:32]!r}, not a message "
                                       "type: ignored"))
            continue
        pub.setsockopt(zmq.SUBSCRIBE if msg[0] else zmq.UNSUBSCRIBE, topic)


def _serve(sink: Sink, pull: zmq.Socket, pub: zmq.Socket, wake: sockets.WakePipe,
           stop: sockets.StopFlag, config: SinkConfig) -> None:
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(pub, zmq.POLLIN)
    poller.register(wake.r, zmq.POLLIN)
    gather = zmq.Poller()
    gather.register(wake.r, zmq.POLLIN)
    next_status = 0.0
    bad_seen = 0
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_status:
            sink.tick()
            next_status = now + config.status_s
            if sink.bad.count != bad_seen:
                # A flood of bad messages came through ZeroMQ's queues and was dropped:
                # hand the freed memory back (glibc keeps it in its arenas otherwise).
                bad_seen = sink.bad.count
                sockets.release_memory()
        events = dict(poller.poll(POLL_MS))
        if pub in events:
            take_subscriptions(pub, sink.bad)
        if pull in events:
            for peer, msg in sockets.receive(pull, sink.bad, SINK_EXPECTS):
                # Under CURVE every message carries its key's roles (ZAP user id).
                sink.on_message(msg, security.peer_roles(peer) if config.curve else None)
        sink.flush_acks()
        sink.publish_progress()
        if (pull in events and not (config.once and sink.jobs_done)
                and sink.images_in_progress() >= GATHER_BUSY):
            gather.poll(GATHER_S * 1000)  # returns early only for a stop request
        if config.once and sink.jobs_done:
            # Give subscribers a moment to hear JobDone before the PUB socket goes.
            for _ in range(3):
                sink.publish_finished()
                time.sleep(0.05)
            break
