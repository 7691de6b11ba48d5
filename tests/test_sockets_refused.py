"""``sockets.receive`` and ``Receiver`` on real sockets: whole multipart messages in
order, batches of one and of many, and every refused message handed to ``refused`` with
its frames (the worker gives back the credit a bad tile cost from them)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from zmqvision import protocol, sockets


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a = sockets.make_socket(ctx, zmq.DEALER)
    b = sockets.make_socket(ctx, zmq.DEALER, maxmsgsize=1 << 16)
    a.bind("inproc://refused")
    b.connect("inproc://refused")
    yield a, b
    a.close()
    b.close()
    ctx.term()


def _tile(index: int) -> list:
    return protocol.encode(protocol.Tile(
        job="j", image="i", index=index, box=(0.0, 0.0, 4.0, 4.0), scale=1.0, model="m@1",
        pixels=np.full((4, 4, 3), index, np.uint8)))


@pytest.mark.parametrize("use_receiver", [False, True])
def test_refused_messages_are_handed_back_in_order_with_their_frames(pair, use_receiver):
    a, b = pair
    bad = sockets.BadMessages("test")
    refused: list[tuple[list[bytes], str]] = []

    def on_refused(frames, exc):
        refused.append(([bytes(f) for f in frames], str(exc)))

    sent = [_tile(0), [b"zv.tile", b"\xc1", b"x"], _tile(1),
            [b"zv.tile", msgpack.packb([1]), b"x" * (1 << 16)],  # a header that is no map
            [b"zv.tile", *[b"f"] * 10], _tile(2)]  # too many frames
    for frames in sent:
        a.send_multipart(frames)
    assert b.poll(5000)
    if use_receiver:
        got = list(sockets.Receiver(b, bad, (protocol.MsgType.TILE,), refused=on_refused)())
    else:
        got = list(sockets.receive(b, bad, (protocol.MsgType.TILE,), refused=on_refused))
    assert [m.index for _, m in got] == [0, 1, 2]
    assert [int(m.pixels[0, 0, 0]) for _, m in got] == [0, 1, 2]
    assert bad.count == 3 and len(refused) == 3
    assert refused[0][0] == [b"zv.tile", b"\xc1", b"x"]
    assert len(refused[1][0]) == 3 and len(refused[1][0][2]) == 1 << 16
    assert len(refused[2][0]) == 11 and "frames" in refused[2][1]


def test_one_message_at_a_time_then_nothing(pair):
    a, b = pair
    receive = sockets.Receiver(b, sockets.BadMessages("test"), (protocol.MsgType.TILE,))
    assert list(receive()) == []  # nothing ready: nothing, no wait
    for i in range(3):
        a.send_multipart(_tile(i))
        assert b.poll(5000)
        assert [m.index for _, m in receive()] == [i]
    assert list(receive()) == []
    for i in range(5):
        a.send_multipart(_tile(i))
    assert [m.index for _, m in receive(limit=2)] == [0, 1]
    assert [m.index for _, m in receive()] == [2, 3, 4]
