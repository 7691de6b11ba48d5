"""The ventilator's choice of wire encoding per worker, from where its messages come."""

from __future__ import annotations

import pytest
import zmq

from tests.conftest import free_port
from zmqvision.ventilator import is_local_peer


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["tcp", "ipc", "inproc"])
def test_workers_on_this_host_are_local(kind, tmp_path):
    endpoint = {"tcp": f"tcp://127.0.0.1:{free_port()}", "ipc": f"ipc://{tmp_path}/t.ipc",
                "inproc": "inproc://local-peer"}[kind]
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind(endpoint)
        dealer.connect(endpoint)
        dealer.send(b"hello")
        assert router.poll(5000)
        frames = router.recv_multipart(copy=False)
        assert is_local_peer(frames[0], endpoint)
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


def _non_loopback_ip() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, only a route chosen
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.mark.timeout(20)
def test_a_worker_from_another_address_is_remote():
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = free_port()
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind(f"tcp://{ip}:{port}")
        dealer.connect(f"tcp://{ip}:{port}")
        dealer.send(b"hello")
        assert router.poll(5000)
        frames = router.recv_multipart(copy=False)
        assert frames[0].get("Peer-Address") == ip
        assert not is_local_peer(frames[0], f"tcp://{ip}:{port}")
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()
