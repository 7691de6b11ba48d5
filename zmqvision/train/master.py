"""The training master's side of the wire: shards to the pool's workers, a step's
parameters out, the shards' gradients back (docs/protocol.md, "Training").

``PoolGradients`` binds a ROUTER of its own (training messages are larger than tiles'
control messages and have nothing to do with the engine's credit) and invites the pool's
workers over their tile link, through the pool's engine. Each worker that says hello
gets a share of the shards, once. A step sends every worker the parameters and its rows
of the batch and waits for one gradient per shard. A worker that dies (its heartbeats
stop: the engine's dispatcher no longer hears it) or does not answer within
``step_timeout`` loses its shards to the others, who get their data and compute the
step's missing shards again: the step's answer is the same as if nobody had died.
Workers that join later are invited too and take shards at the next epoch boundary
(``rebalance``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import zmq

from zmqvision import protocol, security, sockets
from zmqvision.train import schedule
from zmqvision.train.trainer import Examples, ShardGrad

log = logging.getLogger("zmqvision.train")

_FROM_WORKERS = (protocol.MsgType.TRAIN_HELLO, protocol.MsgType.TRAIN_GRAD)
INVITE_EVERY_S = 0.5
SEND_TIMEOUT_MS = 10_000


def _nbytes(frames: list) -> int:
    return sum(memoryview(f).nbytes for f in frames)


class TrainingFailed(RuntimeError):
    """No worker could compute a step (none joined, or all left) in time."""


@dataclass
class Member:
    wid: bytes
    shards: set[int] = field(default_factory=set)


class PoolGradients:
    """A ``trainer.GradientSource`` over the pool's workers; see the module doc."""

    def __init__(self, pool, data: Examples, class_weights: np.ndarray, shards: int, *,
                 bind: str = "tcp://127.0.0.1:0", curve: str | None = None,
                 step_timeout: float = 30.0, join_timeout: float = 120.0,
                 min_workers: int = 1) -> None:
        self.pool = pool
        self.engine = pool.engine
        self.session = uuid.uuid4().hex[:16]
        self.data = data
        self.class_weights = tuple(float(w) for w in class_weights)
        self.shards = shards
        self.step_timeout = step_timeout
        self.join_timeout = join_timeout
        self.min_workers = min_workers
        self.router = sockets.make_socket(self.engine.ctx, zmq.ROUTER, sndhwm=10_000,
                                          rcvhwm=10_000, linger=0,
                                          maxmsgsize=protocol.MAX_TRAIN_MESSAGE_BYTES)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        self.bad = sockets.BadMessages("training master")
        self.secured = None
        try:
            self.secured = security.secure(self.engine.ctx, curve,
                                           servers=((self.router, (security.WORKER,)),))
            self.endpoint = sockets.connectable(sockets.bind(self.router, bind))
        except BaseException:
            self.close()
            raise
        self.members: dict[bytes, Member] = {}  # joined and alive
        self.owner: dict[int, bytes] = {}  # shard -> member holding it
        self.gone: set[bytes] = set()  # declared dead: never used again this session
        self._invited_at = 0.0
        self.bytes_out = 0  # parameters and indices sent (steps), for the benchmark
        self.bytes_in = 0  # gradients received
        self.data_bytes = 0  # shards sent
        self.recomputed = 0  # shard gradients asked again after a worker was lost

    # ------------------------------------------------------------------ membership

    def _invite(self) -> None:
        """Invite the pool's workers that have not joined (in the engine's thread)."""
        self._invited_at = time.monotonic()
        invite = protocol.encode(protocol.TrainInvite(self.session, self.endpoint))
        skip = frozenset(self.members) | frozenset(self.gone)
        router = self.engine.workers.router

        def send() -> None:
            for wid in list(self.engine.dispatch.workers):
                if wid not in skip:  # gone or full: invited again next time
                    with contextlib.suppress(zmq.ZMQError):
                        router.send_multipart([wid, *invite], flags=zmq.NOBLOCK)
        self.engine.call_soon(send)

    def _alive(self, wid: bytes) -> bool:
        """Whether the pool's engine still hears the worker's heartbeats."""
        d = self.engine.dispatch
        slot = d.workers.get(wid)
        return slot is not None and time.monotonic() - slot.last_heard <= (
            d.dead_periods * slot.period)

    def wait_for_workers(self) -> None:
        """Block until ``min_workers`` workers joined (TrainingFailed past join_timeout)."""
        deadline = time.monotonic() + self.join_timeout
        while len(self.members) < self.min_workers:
            if time.monotonic() > deadline:
                raise TrainingFailed(f"{len(self.members)} of {self.min_workers} workers "
                                     f"joined within {self.join_timeout:.0f} s")
            self._pump(100)
        self.rebalance()

    def _join(self, wid: bytes) -> None:
        if wid in self.members or wid in self.gone:
            return
        self.members[wid] = Member(wid)
        log.info("training: worker %s joined", wid.decode(errors="replace"))

    def _lose(self, wid: bytes, why: str) -> set[int]:
        """Forget a member; its shards (returned) go to the others."""
        member = self.members.pop(wid, None)
        self.gone.add(wid)
        if member is None:
            return set()
        log.warning("training: worker %s lost (%s); its %d shards move",
                    wid.decode(errors="replace"), why, len(member.shards))
        for s in member.shards:
            self.owner.pop(s, None)
        self._place(sorted(member.shards))
        return member.shards

    def _place(self, shards: list[int]) -> None:
        """Give each shard to the member with the fewest (ties: lowest id), sending data."""
        for s in shards:
            if not self.members:
                return
            to = min(self.members.values(), key=lambda m: (len(m.shards), m.wid))
            self._give(s, to)

    def _give(self, shard: int, member: Member) -> None:
        old = self.owner.get(shard)
        if old in self.members:
            self.members[old].shards.discard(shard)
        rows = schedule.shard_rows(len(self.data), self.shards, shard)
        msg = protocol.TrainShard(self.session, shard, self.data.x[rows], self.data.y[rows],
                                  self.class_weights)
        frames = protocol.encode(msg)
        if not self._send(member.wid, frames):
            self._lose(member.wid, "unreachable")
            self._place([shard])
            return
        self.data_bytes += _nbytes(frames)
        member.shards.add(shard)
        self.owner[shard] = member.wid

    def rebalance(self) -> None:
        """Place unowned shards, then even out the members' loads (newcomers take
        shards from the busiest); called between epochs."""
        self._pump(0)
        self._place([s for s in range(self.shards) if self.owner.get(s) not in self.members])
        while len(self.members) > 1:
            big = max(self.members.values(), key=lambda m: (len(m.shards), m.wid))
            small = min(self.members.values(), key=lambda m: (len(m.shards), m.wid))
            if len(big.shards) - len(small.shards) <= 1:
                break
            self._give(max(big.shards), small)

    # ------------------------------------------------------------------ steps

    def compute(self, step: int, params: np.ndarray, layers: tuple[int, ...],
                parts: dict[int, np.ndarray]) -> dict[int, ShardGrad]:
        got: dict[int, ShardGrad] = {}
        asked: dict[int, tuple[bytes, float]] = {}  # shard -> (member, when asked)
        self._ask(step, params, layers, parts, sorted(parts), asked)
        no_member_since = None
        while len(got) < len(parts):
            for peer, msg in self._pump(50):
                if (isinstance(msg, protocol.TrainGrad) and msg.step == step
                        and msg.shard in parts and msg.shard not in got
                        and asked.get(msg.shard, (None,))[0] == peer
                        and msg.grad.size == params.size
                        and msg.examples == len(parts[msg.shard])):
                    got[msg.shard] = (msg.loss, msg.weight, np.array(msg.grad))
            now = time.monotonic()
            missing = [s for s in parts if s not in got]
            lost = {asked[s][0] for s in missing if s in asked and (
                not self._alive(asked[s][0]) or now - asked[s][1] > self.step_timeout)}
            for wid in lost:
                self._lose(wid, "no heartbeat" if not self._alive(wid) else
                           f"no gradient within {self.step_timeout:.0f} s")
            redo = [s for s in missing if s not in asked or asked[s][0] not in self.members]
            if redo:
                if not self.members:
                    no_member_since = no_member_since or now
                    if now - no_member_since > self.join_timeout:
                        raise TrainingFailed(f"step {step}: no worker left to compute it")
                    continue
                no_member_since = None
                self._place([s for s in redo if self.owner.get(s) not in self.members])
                self.recomputed += len(redo)
                for s in redo:
                    asked.pop(s, None)
                self._ask(step, params, layers, parts, redo, asked)
        return got

    def _ask(self, step: int, params: np.ndarray, layers: tuple[int, ...],
             parts: dict[int, np.ndarray], shards: list[int],
             asked: dict[int, tuple[bytes, float]]) -> None:
        """Send each owner of ``shards`` one TrainStep for its part of them."""
        if not self.members:
            return
        self._place([s for s in shards if self.owner.get(s) not in self.members])
        by_owner: dict[bytes, list[int]] = {}
        for s in shards:
            if self.owner.get(s) in self.members:
                by_owner.setdefault(self.owner[s], []).append(s)
        now = time.monotonic()
        for wid, mine in sorted(by_owner.items()):
            idx = [parts[s] for s in mine]
            msg = protocol.TrainStep(self.session, step, tuple(layers), params, tuple(mine),
                                     tuple(len(i) for i in idx),
                                     np.concatenate(idx).astype(np.uint32))
            frames = protocol.encode(msg)
            if self._send(wid, frames):
                self.bytes_out += _nbytes(frames)
                for s in mine:
                    asked[s] = (wid, now)
            else:  # not asked: the loop in ``compute`` places and asks them again
                self._lose(wid, "unreachable")

    def _send(self, wid: bytes, frames: list) -> bool:
        try:
            self.router.send_multipart([wid, *frames], copy=False)
            return True
        except zmq.ZMQError:  # EHOSTUNREACH: disconnected; EAGAIN: stuck past SNDTIMEO
            return False

    def _pump(self, timeout_ms: int) -> list[tuple[bytes, protocol.Message]]:
        """Receive what is there (waiting up to ``timeout_ms``); hellos join here;
        invites go out every INVITE_EVERY_S. Returns the other messages."""
        if time.monotonic() - self._invited_at > INVITE_EVERY_S:
            self._invite()
        out = []
        if self.router.poll(timeout_ms, zmq.POLLIN):
            for peer, msg in sockets.receive(self.router, self.bad, _FROM_WORKERS,
                                             routed=True):
                if msg.session != self.session:
                    continue
                wid = peer.bytes
                if isinstance(msg, protocol.TrainHello):
                    self._join(wid)
                else:
                    self.bytes_in += msg.grad.nbytes if hasattr(msg, "grad") else 0
                    out.append((wid, msg))
        return out

    def close(self) -> None:
        """Tell the members the session is over; close the socket."""
        for wid in list(getattr(self, "members", {})):
            self._send(wid, protocol.encode(protocol.TrainEnd(self.session)))
        if self.secured is not None:
            self.secured.close()
        self.router.close(linger=200)
