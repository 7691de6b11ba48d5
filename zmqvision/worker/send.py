"""Sending a multipart message without waiting, at the cost of the frames alone.

pyzmq's ``send_multipart`` combines its flags as ``zmq.Flag`` enums (Python-level enum
arithmetic per frame) and checks every frame's buffer first; a worker sends two messages
per tile (the result, the credit), so that is ~4 us a message of pure overhead. The
frames here are ``protocol.encode``'s (bytes and arrays), and the flags plain ints.
ZeroMQ queues a multipart message whole or not at all: only its first frame can meet a
full queue (``zmq.Again``), so the rest never fails on room once the first is in.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq

_MORE = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)


def send_now(sock: zmq.Socket, frames: Sequence, copy: bool = True) -> None:
    """Queue ``frames`` as one message now; raises ``zmq.Again`` when there is no room
    (nothing was queued then)."""
    send = sock.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, _MORE if i < last else _LAST, copy=copy)


def try_send(sock: zmq.Socket, frames: Sequence, copy: bool = True) -> bool:
    """``send_now``, False instead of ``zmq.Again``: for what may wait or be dropped."""
    try:
        send_now(sock, frames, copy)
        return True
    except zmq.Again:
        return False
