"""The worker's part in training a classifier head (``zmqvision train``).

A training master invites the pool's workers on their tile link (``zv.train_invite``);
a worker that accepts connects a DEALER of its own to the master's ROUTER, says hello,
keeps the shards of embeddings it is sent, and answers each step with one gradient per
shard it was asked about (docs/protocol.md, "Training"). The arithmetic is
``zmqvision.train.head.grad_sums``, the very function the master's reference runs, so a
shard's gradient is the same bytes on any worker.

It runs in the worker's loop thread (``Worker._step`` polls its socket with the rest):
a step is a few milliseconds of numpy, between tiles.
"""

from __future__ import annotations

import logging

import numpy as np
import zmq

from zmqvision import protocol, security, sockets

log = logging.getLogger("zmqvision.worker.train")

_FROM_MASTER = (protocol.MsgType.TRAIN_SHARD, protocol.MsgType.TRAIN_STEP,
                protocol.MsgType.TRAIN_END)


class TrainService:
    """One training session at a time: its socket, its shards, its answers."""

    def __init__(self, ctx: zmq.Context, worker_id: str, poller: zmq.Poller,
                 curve: str | None = None) -> None:
        self.ctx = ctx
        self.worker_id = worker_id
        self.poller = poller
        self.curve = curve
        self.session: str | None = None
        self.sock: zmq.Socket | None = None
        self.secured = None
        self.shards: dict[int, protocol.TrainShard] = {}
        self.steps = 0  # gradients sent (for logs and tests)
        self.bad = sockets.BadMessages(f"worker {worker_id} (training)")

    def invite(self, msg: protocol.TrainInvite) -> None:
        """Join ``msg.session`` (leaving any other); an invite to the session already
        joined is a repeat for newcomers and is ignored."""
        if msg.session == self.session:
            return
        self.leave()
        sock = sockets.make_socket(self.ctx, zmq.DEALER, sndhwm=1000, rcvhwm=1000,
                                   maxmsgsize=protocol.MAX_TRAIN_MESSAGE_BYTES)
        sock.setsockopt(zmq.ROUTING_ID, self.worker_id.encode())
        try:
            self.secured = security.secure(self.ctx, self.curve, clients=(sock,))
            sock.connect(msg.endpoint)
        except BaseException:
            sock.close()
            raise
        self.sock, self.session = sock, msg.session
        self.poller.register(sock, zmq.POLLIN)
        sockets.try_send(sock, protocol.encode(protocol.TrainHello(msg.session,
                                                                   self.worker_id)))
        log.info("worker %s: joined training session %s at %s", self.worker_id,
                 msg.session, msg.endpoint)

    def serve(self, events: dict) -> None:
        """Answer what the master sent (call after the loop's poll)."""
        if self.sock is None or not events.get(self.sock, 0) & zmq.POLLIN:
            return
        for _, msg in sockets.receive(self.sock, self.bad, _FROM_MASTER, limit=100):
            if msg.session != self.session:
                continue
            if isinstance(msg, protocol.TrainShard):
                self.shards[msg.shard] = msg
            elif isinstance(msg, protocol.TrainStep):
                self._step(msg)
            else:
                self.leave()
                return

    def _step(self, msg: protocol.TrainStep) -> None:
        from zmqvision.train.head import grad_sums  # numpy only; no cost to tile workers

        at = 0
        for shard, n in zip(msg.shards, msg.counts, strict=True):
            idx = msg.indices[at:at + n]
            at += n
            data = self.shards.get(shard)
            if data is None or data.x.shape[1] != msg.layers[0] or (
                    n and int(idx.max()) >= len(data.y)):
                self.bad(protocol.ProtocolError(f"step {msg.step}: shard {shard} is not "
                                                "here or does not fit the step"))
                continue
            loss, weight, grad = grad_sums(msg.params, msg.layers, data.x[idx], data.y[idx],
                                           np.asarray(data.class_weights))
            reply = protocol.TrainGrad(session=msg.session, step=msg.step, shard=shard,
                                       worker=self.worker_id, examples=int(n), weight=weight,
                                       loss=loss, grad=grad)
            self.sock.send_multipart(protocol.encode(reply), copy=False)
            self.steps += 1

    def leave(self) -> None:
        """Drop the session: its shards and its socket."""
        self.shards.clear()
        self.session = None
        if self.sock is not None:
            self.poller.unregister(self.sock)
            if self.secured is not None:
                self.secured.close()
                self.secured = None
            self.sock.close(linger=0)
            self.sock = None

    close = leave
