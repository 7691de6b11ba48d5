"""Memory a stranger can make the sink and the ventilator spend (issue 16, item 7).

A real sink and a real ventilator, each in its own process, as a user starts them:

    python -m zmqvision sink --out OUT --bind-results tcp://127.0.0.1:P1
        --bind-events tcp://127.0.0.1:P2 --overwrite --no-cache
    python -m zmqvision ventilate IMAGE --bind tcp://127.0.0.1:P0
        --sink-results tcp://127.0.0.1:P1 --sink-events tcp://127.0.0.1:P2 --no-progress
        --no-cache

No worker joins, so the ventilator waits with its tiles socket bound. Each attack is sent
by this process over plain TCP, as anyone who can reach the ports could; the RSS of both
processes (``VmRSS``) is read before it and once it has settled after it (no change over
1 MiB for 2 s, at most ``--settle`` seconds), and the difference printed as a markdown
table. The attacks, in this order, on the same two processes:

- ``subscription``: one SUB subscribes to a 10 MB topic on the sink's events port.
- ``multiframe``: one message of a type tag and 100 frames of 1 MiB each, to the sink's
  results port and to the ventilator's tiles port; three times.
- ``orphans``: 100,000 ``zv.result`` of 100 boxes each, for jobs nobody announced.
- ``forged jobs``: 10,000 ``zv.job`` with 1,000 labels each, never followed by anything.

At the end both get SIGTERM, and the seconds each takes to exit are printed (a sink
building a 100 MB subscription trie once ignored it).

    python benchmarks/attacks.py [--settle 60] [--only subscription,multiframe]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from _common import free_port, markdown_table

import zmqvision

# The shared harness (tests/attacks.py), after whatever tree PYTHONPATH names: appended,
# so the zmqvision measured is still the one PYTHONPATH picks.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from tests.attacks import MIB, settled, zmtp_subscribe  # noqa: E402

# The children run the zmqvision this process imports (PYTHONPATH picks the tree to
# measure: `python -m` puts its working directory first on the path).
ROOT = Path(zmqvision.__file__).resolve().parent.parent
IMAGE = Path(__file__).resolve().parent.parent / "examples" / "images" / "chelsea.jpg"


class Roles:
    """The sink and the ventilator under attack, started and stopped here."""

    def __init__(self, tmp: Path) -> None:
        self.tiles, self.results, self.events = (f"tcp://127.0.0.1:{free_port()}"
                                                 for _ in range(3))
        env = dict(os.environ, ZMQVISION_RESULTS_CACHE="off")
        with open(tmp / "sink.log", "wb") as log:
            self.sink = subprocess.Popen(
                [sys.executable, "-m", "zmqvision", "sink", "--out", str(tmp / "out.jsonl"),
                 "--bind-results", self.results, "--bind-events", self.events,
                 "--overwrite", "--no-cache"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.wait_for_sink()
        with open(tmp / "ventilate.log", "wb") as log:
            self.vent = subprocess.Popen(
                [sys.executable, "-m", "zmqvision", "ventilate", str(IMAGE), "--bind",
                 self.tiles, "--sink-results", self.results, "--sink-events", self.events,
                 "--no-progress", "--no-cache"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.wait_for_job()

    def _status(self, accept, timeout: float = 60.0) -> None:
        from zmqvision import protocol

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.events)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if sub.poll(200):
                    try:
                        msg = protocol.decode(sub.recv_multipart())
                    except protocol.ProtocolError:
                        continue
                    if accept(msg):
                        return
            raise RuntimeError("the sink never said it was ready")
        finally:
            sub.close()
            ctx.term()

    def wait_for_sink(self) -> None:
        from zmqvision import protocol

        self._status(lambda m: isinstance(m, protocol.SinkStatus))

    def wait_for_job(self) -> None:
        from zmqvision import protocol

        self._status(lambda m: isinstance(m, protocol.Progress) and m.images_seen >= 1)

    @property
    def pids(self) -> list[int]:
        return [self.sink.pid, self.vent.pid]

    def stop(self) -> list[float]:
        """SIGTERM both; seconds each took to exit (killed after 30 s: reported as such)."""
        took = []
        for p in (self.vent, self.sink):
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            took.append(time.monotonic() - t0)
        return took[::-1]


def push(ctx: zmq.Context, endpoint: str, messages, kind: int = zmq.PUSH) -> None:
    sock = ctx.socket(kind)
    sock.linger = 5000
    sock.sndhwm = 1000
    sock.connect(endpoint)
    for frames in messages:
        sock.send_multipart(frames, copy=False)
    sock.close()


def attack_subscription(roles: Roles, ctx: zmq.Context) -> None:  # noqa: ARG001
    zmtp_subscribe(roles.events, b"z" * (10 * 1000 * 1000))


def attack_multiframe(roles: Roles, ctx: zmq.Context, rounds: int = 3) -> None:
    """Three rounds: glibc serves the first round's 1 MiB blocks by mmap and returns them,
    then raises its mmap threshold, so later rounds' blocks stay in its heap."""
    big = [b"\0" * MIB] * 100
    for _ in range(rounds):
        push(ctx, roles.results, [[b"zv.result", *big]])
        push(ctx, roles.tiles, [[b"zv.ready", *big]], kind=zmq.DEALER)
        time.sleep(1.0)


def attack_orphans(roles: Roles, ctx: zmq.Context, n: int = 100_000) -> None:
    from zmqvision import protocol
    from zmqvision.boxes import Detections

    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 100, (100, 4))
    dets = Detections.of(np.sort(boxes.reshape(100, 2, 2), axis=1).reshape(100, 4),
                         rng.uniform(0, 1, 100).astype(np.float32),
                         np.zeros(100, np.int32))

    def messages():
        for i in range(n):
            yield protocol.encode(protocol.Result(
                job=f"nobody-{i:06d}", image=f"img-{i}", index=0, worker="stranger",
                model="any", detections=dets))

    push(ctx, roles.results, messages())


def attack_forged_jobs(roles: Roles, ctx: zmq.Context, n: int = 10_000) -> None:
    from zmqvision import protocol
    from zmqvision.plan import JobPlan, JobSettings

    start = JobPlan(JobSettings()).job_start("x")
    model = {**start.model, "labels": [f"label number {i}" for i in range(1000)]}

    def messages():
        for i in range(n):
            yield protocol.encode(dataclasses.replace(start, job=f"forged-{i:06d}",
                                                      model=model))

    push(ctx, roles.results, messages())


ATTACKS = {
    "subscription": ("10 MB subscription to the events port", attack_subscription),
    "multiframe": ("100 x 1 MiB frames in one message (sink and ventilator)",
                   attack_multiframe),
    "orphans": ("100,000 results for unknown jobs", attack_orphans),
    "forged jobs": ("10,000 forged zv.job, 1,000 labels each", attack_forged_jobs),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settle", type=float, default=60.0,
                    help="seconds at most to wait for RSS to settle after an attack")
    ap.add_argument("--only", default=",".join(ATTACKS),
                    help="comma-separated attacks: " + ", ".join(ATTACKS))
    args = ap.parse_args()
    names = [a.strip() for a in args.only.split(",") if a.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        roles = Roles(Path(tmp))
        ctx = zmq.Context()
        try:
            before = settled(roles.pids, args.settle)
            for name in names:
                what, attack = ATTACKS[name]
                t0 = time.monotonic()
                attack(roles, ctx)
                after = settled(roles.pids, args.settle)
                rows.append([what, *(f"{(a - b) / MIB:+.1f}" for a, b in zip(after, before,
                                                                              strict=True)),
                             f"{after[0] / MIB:.0f} / {after[1] / MIB:.0f}",
                             f"{time.monotonic() - t0:.1f}"])
                print(f"{name}: sink {(after[0] - before[0]) / MIB:+.1f} MiB, ventilator "
                      f"{(after[1] - before[1]) / MIB:+.1f} MiB", file=sys.stderr)
                before = after
        finally:
            took = roles.stop()
            ctx.term()
    print(markdown_table(["attack", "sink ΔRSS MiB", "ventilator ΔRSS MiB",
                          "RSS after MiB (sink / vent.)", "s"], rows))
    print(f"\nSIGTERM: sink exited in {took[0]:.1f} s, ventilator in {took[1]:.1f} s")


if __name__ == "__main__":
    main()
