"""The stop flag wakes a loop that waits in a poll, and never writes to a closed pipe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from zmqvision.sockets import StopFlag, WakePipe


def test_set_writes_to_registered_pipes_until_forgotten():
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        flag = StopFlag()
        flag.wake_on_set(w)
        flag.set()
        assert os.read(r, 10) == b"s"
        flag.no_wake(w)
        flag.set()
        with pytest.raises(BlockingIOError):
            os.read(r, 10)
    finally:
        os.close(r)
        os.close(w)


CHILD = """
import os, sys, time, zmq
from zmqvision.sockets import StopFlag, WakePipe
r, w = os.pipe()
os.set_blocking(r, False)
os.set_blocking(w, False)
flag = StopFlag()
flag.install_signal_handlers()
flag.wake_on_set(w)
poller = zmq.Poller()
poller.register(r, zmq.POLLIN)
print("ready", flush=True)
t0 = time.monotonic()
events = dict(poller.poll(10_000))  # without the pipe: 10 s
print(r in events, flag.is_set(), round(time.monotonic() - t0, 3), flush=True)
"""


@pytest.mark.timeout(30)
def test_sigterm_ends_a_long_poll_at_once():
    """In a child process: a signal in this one would reach OpenVINO's threads too."""
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        woke, is_set, waited = p.stdout.readline().split()
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert woke == "True" and is_set == "True" and float(waited) < 5


def test_wake_pipe_wakes_on_stop_and_on_wake_and_forgets_when_closed():
    flag = StopFlag()
    pipe = WakePipe(flag)
    try:
        pipe.wake()
        pipe.drain()
        with pytest.raises(BlockingIOError):
            os.read(pipe.r, 10)  # drained
        flag.set()
        assert os.read(pipe.r, 10) == b"s"
        for _ in range(100_000):  # a full pipe never blocks the writer
            pipe.wake()
    finally:
        pipe.close()
    assert not flag._wake_fds
    flag.set()  # nothing is written to the closed (maybe reused) descriptor
