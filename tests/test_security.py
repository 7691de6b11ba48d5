"""CURVE keys and the ZAP allow-list with real sockets on 127.0.0.1: an allowed key gets
through, an unknown key and plain text do not (and both ends say so), a key added to
allowed/ is let in without restarting the server, and missing keys fail with a message
that says what to run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import zmq

from tests.conftest import ROOT
from zmqvision import security

pytestmark = pytest.mark.timeout(60)


def _keys(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmqvision", "keys", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def cluster(tmp_path):
    """A server key dir (with its own client key allowed) and two client dirs."""
    home, friend, stranger = (tmp_path / n for n in ("home", "friend", "stranger"))
    assert _keys("new", str(home)).returncode == 0
    for d in (friend, stranger):
        assert _keys("new", str(d), "--name", "client").returncode == 0
        (d / "server.key").write_bytes((home / "server.key").read_bytes())
    return home, friend, stranger


def _server(ctx, server_dir):
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    secured = security.secure(ctx, server_dir, servers=(pull,))
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    return pull, port, secured


def _send(ctx, client_dir, port, wait_ms: int = 1500):
    """Connect a PUSH with ``client_dir``'s keys (plain text when None) and offer one
    message; returns the socket and what must be closed first."""
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    secured = security.secure(ctx, client_dir, clients=(push,))
    push.connect(f"tcp://127.0.0.1:{port}")
    if push.poll(wait_ms, zmq.POLLOUT):
        push.send(b"hello", flags=zmq.NOBLOCK)
    return push, secured


def _close(sock, secured):
    if secured is not None:
        secured.close()
    sock.close()


def _delivered(server_dir, client_dir, wait_ms: int = 1500) -> bool:
    """One message from a client to a server, each in a Context of its own (as in two
    processes; one ZAP handler per Context)."""
    server_ctx, client_ctx = zmq.Context(), zmq.Context()
    pull, port, s_sec = _server(server_ctx, server_dir)
    push, c_sec = _send(client_ctx, client_dir, port, wait_ms)
    try:
        return bool(pull.poll(wait_ms)) and pull.recv(zmq.NOBLOCK) == b"hello"
    finally:
        _close(push, c_sec)
        _close(pull, s_sec)
        client_ctx.term()
        server_ctx.term()


def test_allowed_key_gets_through_unknown_key_and_plain_text_do_not(cluster, caplog):
    home, friend, stranger = cluster
    assert _keys("allow", str(home), str(friend / "client.key")).returncode == 0
    assert _delivered(home, friend)
    assert _delivered(home, home)  # the server host's own client key
    assert not _delivered(home, stranger)
    # The refused client is told why (libzmq would give up on it in silence).
    assert "refused this host's CURVE key" in caplog.text
    assert "refused a peer whose CURVE key" in caplog.text  # and the server says whom
    assert not _delivered(home, None)  # plain text to a CURVE server
    assert not _delivered(None, friend)  # CURVE to a plain server
    assert "does not speak CURVE" in caplog.text


def test_a_key_allowed_while_the_server_runs_is_let_in_on_its_next_connection(cluster):
    home, friend, _ = cluster
    ctx = zmq.Context()
    pull, port, s_sec = _server(ctx, home)
    try:
        first = _send(ctx, friend, port)
        assert not pull.poll(1000)  # refused: libzmq does not try this connection again
        _close(*first)
        security.allow(home, friend / "client.key")
        time.sleep(1.1)  # the allow-list is read again at most once a second
        second = _send(ctx, friend, port)  # e.g. the worker restarted
        try:
            assert pull.poll(3000) and pull.recv(zmq.NOBLOCK) == b"hello"
        finally:
            _close(*second)
    finally:
        _close(pull, s_sec)
        ctx.term()


def test_missing_keys_say_what_to_run(tmp_path):
    with pytest.raises(security.CurveKeyError, match="zmqvision keys new"):
        security.Curve.load(tmp_path / "none", binds=False, connects=True)
    assert _keys("new", str(tmp_path / "w"), "--name", "client").returncode == 0
    with pytest.raises(security.CurveKeyError, match="server.key"):
        security.Curve.load(tmp_path / "w", binds=False, connects=True)
    with pytest.raises(security.CurveKeyError, match="server.key_secret"):
        security.Curve.load(tmp_path / "w", binds=True, connects=False)
    p = subprocess.run([sys.executable, "-m", "zmqvision", "watch", "--once", "--curve",
                        str(tmp_path / "none"), "--connect", f"ipc://{tmp_path}/nobody"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "zmqvision keys new" in p.stderr, p.stderr


def test_keys_are_never_overwritten_and_secrets_are_private(tmp_path):
    assert _keys("new", str(tmp_path)).returncode == 0
    assert (tmp_path / "server.key_secret").stat().st_mode & 0o077 == 0
    for role in ("ventilator", "worker", "watcher"):  # this host's own key: every role
        assert (tmp_path / "allowed" / role / "client.key").exists()
    again = _keys("new", str(tmp_path), "--name", "server")
    assert again.returncode != 0 and "already exists" in again.stderr
    refused = _keys("allow", str(tmp_path), str(tmp_path / "server.key_secret"))
    assert refused.returncode != 0 and "secret" in refused.stderr
