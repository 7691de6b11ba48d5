"""``run_sink``: the sink's sockets and its loop; everything else is in ``Sink``."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

import zmq

from zmqvision import security, sockets
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
    pull = sockets.make_socket(ctx, zmq.PULL, rcvhwm=10_000, maxmsgsize=16 << 20)
    pub = sockets.make_socket(ctx, zmq.PUB, sndhwm=PUB_SNDHWM)
    sink_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"

    def publish(frames) -> None:
        sockets.try_send(pub, frames, copy=True)

    # One cleanup for every way out, a refused CURVE key or a taken --out included.
    journal = secured = sink = wake = None
    try:
        journal = Journal(config.journal, keep=config.append)
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
        _serve(sink, pull, wake, stop, config)
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


def _serve(sink: Sink, pull: zmq.Socket, wake: sockets.WakePipe, stop: sockets.StopFlag,
           config: SinkConfig) -> None:
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(wake.r, zmq.POLLIN)
    next_status = 0.0
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_status:
            sink.tick()
            next_status = now + config.status_s
        if pull in dict(poller.poll(POLL_MS)):
            for peer, msg in sockets.receive(pull, sink.bad, SINK_EXPECTS):
                # Under CURVE every message carries its key's roles (ZAP user id).
                sink.on_message(msg, security.peer_roles(peer) if config.curve else None)
        sink.flush_acks()
        sink.publish_progress()
        if config.once and sink.jobs_done:
            # Give subscribers a moment to hear JobDone before the PUB socket goes.
            for _ in range(3):
                sink.publish_finished()
                time.sleep(0.05)
            break
