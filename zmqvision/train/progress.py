"""What a person sees while a head trains: a one-line bar on stderr, and
``zv.train_progress`` events on a PUB socket of the train process's own (``--events``),
which ``zmqvision watch --connect ENDPOINT`` shows (a snapshot per step: a watcher that
joins late is current after one step)."""

from __future__ import annotations

import sys
import time

import zmq

from zmqvision import protocol, sockets


class TrainEvents:
    """The PUB socket (bound when an endpoint is given, else nothing is published)."""

    def __init__(self, ctx: zmq.Context, endpoint: str | None, session: str) -> None:
        self.session = session
        self.sock = None
        self.endpoint = None
        if endpoint:
            self.sock = sockets.make_socket(ctx, zmq.PUB, sndhwm=1000, linger=0)
            self.endpoint = sockets.bind(self.sock, endpoint)

    def publish(self, msg: protocol.TrainProgress) -> None:
        if self.sock is not None:
            sockets.try_send(self.sock, protocol.encode(msg))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)


class TrainBar:
    """``epoch 3/30  step 12/40  loss 0.412  val 0.953`` redrawn in place (a terminal) or
    one line per epoch (a log)."""

    def __init__(self, epochs: int, stream=None, quiet: bool = False) -> None:
        self.epochs = epochs
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self._drawn = 0.0

    def step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        now = time.monotonic()
        if self.quiet or not self.tty or (now - self._drawn < 0.1 and step < steps):
            return
        self._drawn = now
        self.stream.write(f"\repoch {epoch + 1}/{self.epochs}  step {step}/{steps}  "
                          f"loss {loss:.4f}   ")
        self.stream.flush()

    def epoch(self, record: dict) -> None:
        if self.quiet:
            return
        val = record.get("val_accuracy")
        line = (f"epoch {record['epoch']}/{self.epochs}  loss {record['loss']:.4f}"
                + (f"  val accuracy {val:.3f}" if val is not None else ""))
        self.stream.write(("\r" if self.tty else "") + line + " " * 8 + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()
