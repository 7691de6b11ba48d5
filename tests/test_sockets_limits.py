"""Limits at the sockets themselves (issue 16, item 7), with real ZeroMQ sockets: a message
is refused by its frame count and its total bytes before it is decoded (MAXMSGSIZE is per
frame), and the sink's events socket takes only subscriptions to its message types."""

from __future__ import annotations

import time

import zmq

from zmqvision import protocol as P
from zmqvision import sockets
from zmqvision.sink.loop import MAX_SUBSCRIPTION_BYTES, is_topic, take_subscriptions


def _pair(ctx, kind_in=zmq.PULL, kind_out=zmq.PUSH, maxmsgsize=1 << 20):
    rx = sockets.make_socket(ctx, kind_in, maxmsgsize=maxmsgsize)
    port = rx.bind_to_random_port("tcp://127.0.0.1")
    tx = sockets.make_socket(ctx, kind_out, linger=1000)
    tx.connect(f"tcp://127.0.0.1:{port}")
    return rx, tx


def _receive_all(rx, bad, n, routed=False, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) + bad.count < n and time.monotonic() < deadline:
        if rx.poll(100):
            got.extend(m for _, m in sockets.receive(rx, bad, routed=routed))
    return got


def test_many_frames_or_many_bytes_in_one_message_are_dropped_before_decoding():
    """Before: 100 frames of 1 MiB each passed a 1 MiB MAXMSGSIZE and reached decode."""
    ctx = zmq.Context()
    rx, tx = _pair(ctx)
    try:
        bad = sockets.BadMessages("test")
        beat = P.encode(P.Ready("w", 1))
        tx.send_multipart([b"zv.ready", *([b"\0" * 1000] * 100)])  # too many frames
        tx.send_multipart([*beat, *([b"\0" * (1 << 20)] * 3)])  # 3 MiB in 5 frames
        tx.send_multipart(beat)
        got = _receive_all(rx, bad, 3)
        assert got == [P.Ready("w", 1)]
        assert bad.count == 2
    finally:
        rx.close()
        tx.close()
        ctx.term()


def test_a_router_counts_its_sender_frame_apart():
    ctx = zmq.Context()
    rx, tx = _pair(ctx, zmq.ROUTER, zmq.DEALER)
    try:
        bad = sockets.BadMessages("test")
        tx.send_multipart([*P.encode(P.Ready("w", 1)), *([b"x"] * (sockets.MAX_FRAMES - 2))])
        tx.send_multipart([*P.encode(P.Ready("w", 1)), *([b"x"] * (sockets.MAX_FRAMES - 1))])
        got = _receive_all(rx, bad, 2, routed=True)
        # The first has MAX_FRAMES frames besides the sender's: it is decoded; the second
        # has one more and is refused before decoding.
        assert got == [P.Ready("w", 1)] and bad.count == 1
    finally:
        rx.close()
        tx.close()
        ctx.term()


def test_no_limit_without_maxmsgsize():
    ctx = zmq.Context()
    rx = ctx.socket(zmq.PULL)
    try:
        assert sockets.message_limit(rx) is None
        rx.setsockopt(zmq.MAXMSGSIZE, 1000)
        assert sockets.message_limit(rx) == 1000 + sockets.MESSAGE_OVERHEAD_BYTES
    finally:
        rx.close()
        ctx.term()


def test_the_events_socket_takes_only_our_topics():
    assert is_topic(b"") and is_topic(b"zv.") and is_topic(P.MsgType.PROGRESS.tag)
    assert not is_topic(b"z" * 300) and not is_topic(b"foo")
    ctx = zmq.Context()
    pub = sockets.make_socket(ctx, zmq.XPUB, maxmsgsize=MAX_SUBSCRIPTION_BYTES)
    pub.setsockopt(zmq.XPUB_MANUAL, 1)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    good, other = (sockets.make_socket(ctx, zmq.SUB) for _ in range(2))
    try:
        good.setsockopt(zmq.SUBSCRIBE, P.MsgType.PROGRESS.tag)
        other.setsockopt(zmq.SUBSCRIBE, b"foo")
        for s in (good, other):
            s.connect(f"tcp://127.0.0.1:{port}")
        bad = sockets.BadMessages("test")
        deadline = time.monotonic() + 10
        received = []
        while (not received or bad.count < 1) and time.monotonic() < deadline:
            if pub.poll(50):
                take_subscriptions(pub, bad)
            pub.send_multipart([P.MsgType.PROGRESS.tag, b"x"])
            pub.send_multipart([b"foo", b"y"])
            if good.poll(50):
                received.append(good.recv_multipart())
        assert received and received[0][0] == P.MsgType.PROGRESS.tag
        assert bad.count == 1  # the subscription to foo
        assert not other.poll(200)  # never subscribed: gets nothing
    finally:
        for s in (pub, good, other):
            s.close()
        ctx.term()


def test_curve_subscribers_pass_the_events_socket_limit():
    """The CURVE handshake's commands pass through MAXMSGSIZE too (a 256-byte limit
    refused every CURVE subscriber)."""
    ctx = zmq.Context()
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    pub = sockets.make_socket(ctx, zmq.XPUB, maxmsgsize=MAX_SUBSCRIPTION_BYTES)
    pub.setsockopt(zmq.XPUB_MANUAL, 1)
    pub.curve_server = True
    pub.curve_secretkey, pub.curve_publickey = server_secret, server_public
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = sockets.make_socket(ctx, zmq.SUB)
    sub.curve_serverkey = server_public
    sub.curve_publickey, sub.curve_secretkey = client_public, client_secret
    try:
        sub.setsockopt(zmq.SUBSCRIBE, P.MsgType.PROGRESS.tag)
        sub.connect(f"tcp://127.0.0.1:{port}")
        bad = sockets.BadMessages("test")
        deadline = time.monotonic() + 10
        got = False
        while not got and time.monotonic() < deadline:
            if pub.poll(50):
                take_subscriptions(pub, bad)
            pub.send_multipart([P.MsgType.PROGRESS.tag, b"x"])
            got = bool(sub.poll(50))
        assert got and bad.count == 0
    finally:
        pub.close()
        sub.close()
        ctx.term()
