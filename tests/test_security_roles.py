"""With CURVE, a key authorises a role: a sink process takes a job's control messages only
from ventilator keys (even one that knows the job's secret is refused if its key is a
worker's), results and heartbeats from worker keys; a watcher's key only subscribes; the
ventilator's tiles socket admits worker keys only; an older allowed/ of keys still works,
as every role, with a warning. Plain-text peers facing CURVE leave a line on both sides.
Real sockets and processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from tests.conftest import ROOT
from tests.test_sink_lock import ready
from zmqvision import protocol as P
from zmqvision import security
from zmqvision.boxes import Detections

pytestmark = pytest.mark.timeout(120)

MODEL = {"ref": "toy@1", "labels": ["cat"], "name": "toy"}
MERGE = {"method": "nmm", "metric": "ios", "threshold": 0.5, "class_agnostic": False}


def _keys(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "zmqvision", "keys", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def keydirs(tmp_path):
    """home: the sink and ventilator host (its own key: every role); a worker's and a
    watcher's key directories, each allowed as that role only."""
    home = tmp_path / "home"
    _keys("new", str(home))
    dirs = {"home": home}
    for role in ("worker", "watcher"):
        d = tmp_path / role
        _keys("new", str(d), "--name", "client")
        shutil.copy(home / "server.key", d / "server.key")
        _keys("allow", str(home), str(d / "client.key"), "--role", role)
        dirs[role] = d
    return dirs


class Peer:
    """A socket of one key directory, in a Context of its own (as another process)."""

    def __init__(self, kind: int, curve, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(kind)
        self.sock.linger = 0
        if kind == zmq.SUB:
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.secured = security.secure(self.ctx, curve, clients=(self.sock,))
        self.sock.connect(endpoint)

    def send(self, msg) -> None:
        assert self.sock.poll(5000, zmq.POLLOUT), "no handshake"
        self.sock.send_multipart(P.encode(msg), copy=True)

    def heard(self, tag: bytes, seconds: float) -> list:
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                frames = self.sock.recv_multipart()
                if frames[0] == tag:
                    got.append(P.decode(frames))
        return got

    def close(self) -> None:
        if self.secured is not None:
            self.secured.close()
        self.sock.close()
        self.ctx.term()


def test_only_ventilator_keys_control_a_job_and_watchers_only_listen(keydirs, procs, tmp_path):
    home = keydirs["home"]
    out = tmp_path / "out.jsonl"
    p = procs.start("sink", "--out", str(out), "--bind-results", "tcp://127.0.0.1:0",
                    "--bind-events", "tcp://127.0.0.1:0", "--no-cache", "--announce",
                    "--curve", str(home), name="sink")
    eps = ready(procs, p)
    vent = Peer(zmq.PUSH, home, eps["results"])
    worker = Peer(zmq.PUSH, keydirs["worker"], eps["results"])
    watcher = Peer(zmq.SUB, keydirs["watcher"], eps["events"])
    intruder = Peer(zmq.PUSH, keydirs["watcher"], eps["results"])
    secret = P.new_job_secret()
    try:
        assert watcher.heard(P.MsgType.SINK_STATUS.tag, 3), "a watcher's key may listen"
        vent.send(P.JobStart(job="j", model=MODEL, tiling={}, merge=MERGE, secret=secret))
        vent.send(P.ImageInfo(job="j", image="a", path="a.jpg", seq=0, width=8, height=8,
                              tiles=1, secret=secret))
        # A worker's key that learned the secret still cannot end (or shorten) the job.
        worker.send(P.JobEnd(job="j", images=0, tiles=0, secret=secret))
        worker.send(P.Withdraw(job="j", images=("a",), secret=secret))
        worker.send(P.Heartbeat(worker="w", host="h", pid=1, device="CPU", model="toy@1",
                                tiles_done=0, tiles_failed=0, tiles_per_s=0.0, in_flight=0,
                                queue=0, uptime=1.0))
        assert watcher.heard(P.MsgType.HEARTBEAT.tag, 3), "a worker's heartbeat is relayed"
        # A watcher's key cannot send at all: its result never lands (first answer wins).
        with contextlib.suppress(zmq.Again):
            intruder.sock.send_multipart(P.encode(P.Result(
                job="j", image="a", index=0, worker="evil", model="toy@1",
                detections=Detections.of(np.array([[2, 2, 3, 3]]), [0.5], [0]))), zmq.NOBLOCK)
        assert not watcher.heard(P.MsgType.JOB_DONE.tag, 1.5)
        worker.send(P.Result(job="j", image="a", index=0, worker="w", model="toy@1",
                             detections=Detections.of(np.array([[1, 1, 5, 5]]), [0.9], [0])))
        vent.send(P.JobEnd(job="j", images=1, tiles=1, secret=secret))
        done = watcher.heard(P.MsgType.JOB_DONE.tag, 5)
        assert done and done[0].images == 1 and done[0].failed == 0
    finally:
        for peer in (vent, worker, watcher, intruder):
            peer.close()
    log = procs.log(p)
    assert "zv.job_end from a key allowed as worker: refused" in log, log
    assert "zv.withdraw from a key allowed as worker: refused" in log, log
    watcher_key = (keydirs["watcher"] / "client.key").read_text().split('public-key = "')[1][:40]
    assert f"{watcher_key} is allowed as watcher, not as ventilator or worker" in log, log
    (record,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert [d["box"] for d in record["detections"]] == [[1, 1, 5, 5]]


def _delivered_to_router(server_dir, roles, client_dir) -> bool:
    """A DEALER's first message reaches a ROUTER served for ``roles`` (the ventilator's
    tiles socket admits workers only)."""
    s_ctx, c_ctx = zmq.Context(), zmq.Context()
    router = s_ctx.socket(zmq.ROUTER)
    router.linger = 0
    s_sec = security.secure(s_ctx, server_dir, servers=((router, roles),))
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = c_ctx.socket(zmq.DEALER)
    dealer.linger = 0
    c_sec = security.secure(c_ctx, client_dir, clients=(dealer,))
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        if dealer.poll(1500, zmq.POLLOUT):
            dealer.send(b"ready", zmq.NOBLOCK)
        if not router.poll(1500):
            return False
        frames = router.recv_multipart(copy=False)
        assert security.peer_roles(frames[1]) & frozenset(roles)
        return True
    finally:
        for sec, sock, ctx in ((c_sec, dealer, c_ctx), (s_sec, router, s_ctx)):
            sec.close()
            sock.close()
            ctx.term()


def test_the_tiles_socket_admits_worker_keys_only(keydirs):
    home = keydirs["home"]
    assert _delivered_to_router(home, (security.WORKER,), keydirs["worker"])
    assert not _delivered_to_router(home, (security.WORKER,), keydirs["watcher"])


def test_an_older_allowed_dir_means_every_role_with_a_warning(tmp_path, caplog):
    home = tmp_path / "home"
    _keys("new", str(home), "--name", "server")
    _keys("new", str(tmp_path / "w"), "--name", "client")
    p = subprocess.run([sys.executable, "-m", "zmqvision", "keys", "allow", str(home),
                        str(tmp_path / "w" / "client.key")], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and "--role" in p.stderr, p.stderr
    assert (home / "allowed" / "client.key").exists()
    key = zmq.auth.load_certificate(tmp_path / "w" / "client.key")[0]
    with caplog.at_level(logging.WARNING, "zmqvision.security"):
        allowed = security.AllowList(home / "allowed")
    assert allowed.roles(key) == security.EVERY_ROLE
    assert "allowed as every role" in caplog.text and "--role worker" in caplog.text
    shutil.copy(home / "server.key", tmp_path / "w" / "server.key")
    assert _delivered_to_router(home, (security.WORKER,), tmp_path / "w")


def test_plain_text_facing_curve_leaves_a_line_on_both_sides(keydirs, caplog):
    """A plain-text client and a CURVE server: the server names its endpoint (libzmq's
    monitor does not name the peer), the client says to start it with --curve."""
    s_ctx, c_ctx = zmq.Context(), zmq.Context()
    pull = s_ctx.socket(zmq.PULL)
    pull.linger = 0
    s_sec = security.secure(s_ctx, keydirs["home"], servers=(pull,))
    pull.bind("tcp://127.0.0.1:0")
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    pushes = [c_ctx.socket(zmq.PUSH) for _ in range(3)]  # 3 tries: one line on the server
    try:
        with caplog.at_level(logging.WARNING, "zmqvision.security"):
            for push in pushes:
                push.linger = 0
            c_sec = security.secure(c_ctx, None, clients=tuple(pushes))
            for push in pushes:
                push.connect(endpoint)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                    "speaks CURVE and this process plain text" not in caplog.text
                    or "that does not speak CURVE" not in caplog.text):
                time.sleep(0.05)
    finally:
        c_sec.close()
        for push in pushes:
            push.close()
        s_sec.close()
        pull.close()
        c_ctx.term()
        s_ctx.term()
    server_lines = [r for r in caplog.records
                    if "refused a peer on tcp://127.0.0.1:" in r.getMessage()]
    assert len(server_lines) == 1, caplog.text
    assert endpoint in server_lines[0].getMessage()
    assert "start it with --curve" in server_lines[0].getMessage()
    client_lines = [r for r in caplog.records
                    if "speaks CURVE and this process plain text" in r.getMessage()]
    assert len(client_lines) == 1 and "--curve DIR" in client_lines[0].getMessage()
    assert "protocol error" not in caplog.text
