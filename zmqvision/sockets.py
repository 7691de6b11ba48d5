"""Endpoints, socket options and the few send/receive patterns every role shares.

Rules kept here so no role forgets them: one Context per process, made after spawn;
every receive waits in a poll with a timeout and checks a stop flag; high-water marks
are set on purpose; sockets close with ``linger`` set, in ``finally``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence

import zmq

from zmqvision import protocol

log = logging.getLogger("zmqvision")

# Documented default ports (README, docs/protocol.md): the ventilator binds TILES, the sink
# binds RESULTS (partial results, job manifests and heartbeats) and EVENTS (PUB).
TILES_PORT = 5557
RESULTS_PORT = 5558
EVENTS_PORT = 5559

DEFAULT_HOST = "127.0.0.1"


def bind_endpoint(port: int, host: str = DEFAULT_HOST) -> str:
    """Where a stable role binds by default: loopback only, as trusted servers do (Redis'
    protected mode, Jupyter): reaching it from other hosts is a choice made with a
    non-loopback address and ``--curve`` (or ``--insecure``; see ``security.exposure``)."""
    return f"tcp://{host}:{port}"


def is_loopback(endpoint: str) -> bool:
    """Whether binding ``endpoint`` keeps it on this host: ipc and inproc, and tcp on a
    loopback address (127.0.0.0/8, ::1, localhost). ``*``, 0.0.0.0, an interface name or
    any other address can be reached from elsewhere."""
    if not endpoint.startswith(("tcp://", "ws://", "wss://")):
        return endpoint.startswith(("ipc://", "inproc://"))
    host = endpoint.split("://", 1)[1].rsplit(":", 1)[0]
    host = host.split(";")[-1].strip("[]")  # "src;dst" for connect; "[::1]"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name
        return False


def connect_endpoint(port: int, host: str = DEFAULT_HOST) -> str:
    return f"tcp://{host}:{port}"


class StopFlag:
    """A thread-safe stop flag that SIGINT/SIGTERM set, so loops end between polls.

    With ``parent_pid``, the flag also counts as set once that parent is gone, so a child
    of `zmqvision run` never outlives it, even when the parent was SIGKILLed.
    """

    def __init__(self, parent_pid: int | None = None) -> None:
        self._event = threading.Event()
        self.parent_pid = parent_pid
        self._wake_fds: list[int] = []

    def wake_on_set(self, fd: int) -> None:
        """Write a byte to ``fd`` (a pipe a poller watches) when the flag is set, so a loop
        waiting in a long poll stops at once instead of at its next timeout."""
        self._wake_fds.append(fd)

    def no_wake(self, fd: int) -> None:
        """Before closing ``fd``: its number may be reused for a file soon after."""
        if fd in self._wake_fds:
            self._wake_fds.remove(fd)

    def set(self) -> None:
        self._event.set()
        for fd in self._wake_fds:
            # A full pipe means the loop is awake anyway; a closed one, that it is gone.
            with contextlib.suppress(OSError):
                os.write(fd, b"s")

    def is_set(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._event.set()
        return self._event.is_set()

    def install_signal_handlers(self) -> None:
        """Only possible from the main thread; elsewhere the caller owns stopping."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):  # noqa: ARG001
            self.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


class WakePipe:
    """A pipe that a loop's poller watches, so the loop wakes at once when something
    happens outside ZeroMQ: the stop flag is set (SIGTERM), or another thread has work for
    it (``wake``). Both ends are non-blocking: a full pipe means the loop is awake anyway."""

    def __init__(self, stop: StopFlag | None = None) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self._stop = stop
        if stop is not None:
            stop.wake_on_set(self.w)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.w, b"x")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.r, 4096):
                pass

    def close(self) -> None:
        if self._stop is not None:
            self._stop.no_wake(self.w)  # before closing: the number may soon name a file
        os.close(self.r)
        os.close(self.w)


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind and return the endpoint actually bound (resolves port 0 to the real port),
    with a message that names the endpoint when it is taken."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise OSError(f"cannot bind {endpoint}: {exc.strerror}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def connectable(endpoint: str) -> str:
    """A bound endpoint as a peer on this host would connect to it."""
    return endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace(
        "tcp://*:", "tcp://127.0.0.1:"
    )


def make_socket(
    ctx: zmq.Context,
    kind: int,
    *,
    sndhwm: int | None = None,
    rcvhwm: int | None = None,
    linger: int = 0,
    maxmsgsize: int | None = None,
) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = linger
    if sndhwm is not None:
        sock.sndhwm = sndhwm
    if rcvhwm is not None:
        sock.rcvhwm = rcvhwm
    if maxmsgsize is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
    return sock


def send_blocking(
    sock: zmq.Socket,
    frames: Sequence,
    stop: StopFlag | None,
    *,
    copy: bool = False,
    poll_ms: int = 100,
    while_waiting: Callable[[], None] | None = None,
) -> bool:
    """Send, waiting for room (HWM) or a peer, but never past a stop request.

    Returns False if stopped before the message could be queued. ``while_waiting`` runs
    between polls so that a role stays responsive (draining events) while it is blocked.
    """
    while True:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
            return True
        except zmq.Again:
            pass
        if stop is not None and stop.is_set():
            return False
        if while_waiting is not None:
            while_waiting()
        sock.poll(poll_ms, zmq.POLLOUT)


_MORE = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)


def send_now(sock: zmq.Socket, frames: Sequence, *, copy: bool = True) -> None:
    """Queue ``frames`` as one message now; ``zmq.Again`` when there is no room (nothing
    was queued then).

    Frame by frame with plain int flags: pyzmq's ``send_multipart`` combines ``zmq.Flag``
    enums per frame and checks every buffer first, ~4 µs a message, and a worker sends two
    messages per tile. ZeroMQ queues a multipart message whole or not at all: only its
    first frame can meet a full queue, so the rest never fails on room once it is in."""
    send = sock.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, _MORE if i < last else _LAST, copy=copy)


def try_send(sock: zmq.Socket, frames: Sequence, *, copy: bool = True) -> bool:
    """Send if there is room now; for messages that may wait or be dropped (credit,
    heartbeats, events)."""
    try:
        send_now(sock, frames, copy=copy)
        return True
    except zmq.Again:
        return False


# The most frames any message has: type tag, header and up to three buffers (a Result's
# boxes, scores and labels), with room for one more; a ROUTER adds the sender's frame.
MAX_FRAMES = 6
# What one message may hold beyond its socket's MAXMSGSIZE (which ZeroMQ checks per frame
# only: 100 frames of 1 MiB each passed a 1 MiB limit): the header and the type tag.
MESSAGE_OVERHEAD_BYTES = protocol.MAX_HEADER_BYTES + 4096
# A dropped message this big hands its memory back to the OS at once (glibc keeps freed
# blocks in its arenas otherwise: 100 frames of 1 MiB stayed as +100 MB of RSS).
TRIM_AFTER_BYTES = 4 << 20


def _libc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


release_memory = _libc_trim()


def message_limit(sock: zmq.Socket) -> int | None:
    """The most bytes one whole message may have on ``sock``: its MAXMSGSIZE (per frame)
    plus a header; None when the socket has no limit."""
    limit = sock.getsockopt(zmq.MAXMSGSIZE)
    return None if limit < 0 else limit + MESSAGE_OVERHEAD_BYTES


def oversized(frames: Sequence[zmq.Frame], max_frames: int,
              max_bytes: int | None) -> str | None:
    """Why a received message is refused before decoding (too many frames, too many bytes
    in all), or None."""
    if len(frames) > max_frames:
        return f"a message of {len(frames)} frames (at most {max_frames})"
    if max_bytes is not None:
        total = sum(len(f) for f in frames)
        if total > max_bytes:
            return f"a message of {total} bytes in all (at most {max_bytes})"
    return None


class BadMessages:
    """Counts and logs (rate-limited) messages that failed to parse: never fatal."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.count = 0

    def __call__(self, exc: Exception) -> None:
        self.count += 1
        if self.count <= 10 or self.count % 1000 == 0:
            log.warning("%s: dropped a bad message (#%d): %s", self.where, self.count, exc)


# What a receive loop is told of a message it refused (too big, or not decoding): its
# frames (the sender's routing frame left out) and why. The worker gives the credit of a
# refused tile back and answers it when its header still names it (docs/protocol.md).
Refused = Callable[[Sequence[zmq.Frame], protocol.ProtocolError], None]

_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def receive(
    sock: zmq.Socket,
    bad: BadMessages,
    expect: tuple[protocol.MsgType, ...] | None = None,
    *,
    routed: bool = False,
    limit: int = 1000,
    refused: Refused | None = None,
) -> Iterator[tuple[zmq.Frame | None, protocol.Message]]:
    """The one receive loop every role uses: take what is ready now (never blocks; call
    after a poll), decode it, count and log what is bad, and yield ``(peer, message)``.

    ``routed``: a ROUTER socket, whose first frame names the sender (``peer``); otherwise
    ``peer`` is the message's first frame (its type tag), which still knows the connection
    it came from (``Peer-Address``). At most ``limit`` messages a call, so one busy socket
    cannot starve the rest of a loop. ``refused`` is told of each message dropped, after
    ``bad`` has counted it (the frames are only valid during the call).

    A message of more than ``MAX_FRAMES`` frames, or of more bytes in all than the
    socket's MAXMSGSIZE allows one frame (plus a header), is dropped before decoding,
    and a big one's memory is handed back to the OS at once.

    A loop that receives on the same socket again and again uses a ``Receiver``, which
    reads the socket's limit once instead of at every call."""
    return _receive(sock, bad, expect, routed, message_limit(sock), limit, refused)


class Receiver:
    """``receive`` for one socket, its limits read once: a socket's MAXMSGSIZE is set when
    it is made (``make_socket``) and never changes after, and reading it is a getsockopt
    at every call otherwise (a loop that wakes per tile calls ``receive`` per tile)."""

    def __init__(self, sock: zmq.Socket, bad: BadMessages,
                 expect: tuple[protocol.MsgType, ...] | None = None, *,
                 routed: bool = False, refused: Refused | None = None) -> None:
        self.sock = sock
        self.bad = bad
        self.expect = expect
        self.routed = routed
        self.refused = refused
        self.max_bytes = message_limit(sock)

    def __call__(self, limit: int = 1000) -> Iterator[tuple[zmq.Frame | None,
                                                            protocol.Message]]:
        """What ``receive`` yields: the messages ready now."""
        return _receive(self.sock, self.bad, self.expect, self.routed, self.max_bytes,
                        limit, self.refused)


def _recv_frames(recv: Callable) -> tuple[list[zmq.Frame], int]:
    """One whole message that is ready (``zmq.Again`` when none is) and its bytes in all.
    Each frame says whether more follow (``Frame.more``): pyzmq's ``recv_multipart`` asks
    the socket (a getsockopt) after every frame instead, 5 us a tile's 3 frames, not 2."""
    frame = recv(_NOBLOCK, copy=False)
    frames = [frame]
    total = len(frame)
    while frame.more:  # the rest of a message is there once its first frame is
        frame = recv(_NOBLOCK, copy=False)
        frames.append(frame)
        total += len(frame)
    return frames, total


def _receive(sock: zmq.Socket, bad: BadMessages, expect: tuple[protocol.MsgType, ...] | None,
             routed: bool, max_bytes: int | None, limit: int,
             refused: Refused | None) -> Iterator[tuple[zmq.Frame | None, protocol.Message]]:
    max_frames = MAX_FRAMES + routed
    recv = sock.recv
    for i in range(limit):
        # Most wakes bring one message (a worker's tile): asking whether a second is
        # there (EVENTS, 1.5 us) is cheaper than the zmq.Again that ends a batch (3.7 us,
        # an exception built with its strerror). A longer batch pays the question once.
        if i == 1 and not sock.getsockopt(_EVENTS) & _POLLIN:
            return
        try:
            frames, total = _recv_frames(recv)
        except zmq.Again:
            return
        body = frames[1:] if routed else frames
        if len(frames) > max_frames or (max_bytes is not None and total > max_bytes):
            why = oversized(frames, max_frames, max_bytes)
            exc = protocol.ProtocolError(f"dropped {why}")
            bad(exc)
            if refused is not None and body:
                refused(body, exc)
            del frames, body
            if total >= TRIM_AFTER_BYTES:
                release_memory()
            continue
        if not body:
            bad(protocol.ProtocolError("a routed message without a body"))
            continue
        try:
            msg = protocol.decode(body, expect)
        except protocol.ProtocolError as exc:
            bad(exc)
            if refused is not None:
                refused(body, exc)
            continue
        yield frames[0], msg
