"""The ventilator's choice of wire encoding per worker, from where its messages come."""

from __future__ import annotations

import pytest
import zmq

from zmqvision.ventilator import is_local_peer


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["tcp", "ipc", "inproc"])
def test_workers_on_this_host_are_local(kind, tmp_path):
    endpoint = {"tcp": "tcp://127.0.0.1:0", "ipc": f"ipc://{tmp_path}/t.ipc",
                "inproc": "inproc://local-peer"}[kind]
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind(endpoint)
        endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)  # the port it picked
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
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind(f"tcp://{ip}:0")
        endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)  # the port it picked
        dealer.connect(endpoint)
        dealer.send(b"hello")
        assert router.poll(5000)
        frames = router.recv_multipart(copy=False)
        assert frames[0].get("Peer-Address") == ip
        assert not is_local_peer(frames[0], endpoint)
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


@pytest.mark.timeout(30)
def test_prefetch_decodes_the_first_inputs_before_the_job_runs(tmp_path, models_ready):
    """`run` calls prefetch while its workers load the model: by the time a worker asks
    for tiles, the first images (read_ahead + 1 of them, no more) are decoded, in order."""
    import os
    import threading
    import time

    from PIL import Image

    from zmqvision.io import iter_image_paths
    from zmqvision.ventilator import VentilateConfig, Ventilator

    sizes = [(300, 200), (200, 300), (640, 480), (50, 60), (90, 90)]
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    vent = Ventilator(VentilateConfig(inputs=(str(tmp_path),), model="blazeface-short",
                                      tiles="inproc://prefetch-test", read_ahead=2,
                                      sink=f"ipc://{tmp_path}/nobody-results",
                                      events=f"ipc://{tmp_path}/nobody-events",
                                      cache=None), ctx=zmq.Context.instance())
    try:
        vent.prefetch()
        pending = list(vent._reader._pending)
        assert len(pending) == 3  # read_ahead + 1: memory stays bounded
        deadline = time.monotonic() + 10
        while not all(f.done() for f in pending) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(f.done() for f in pending)  # decoded with no job running
        got = [vent._reader.next() for _ in sizes]
        assert [g.path for g in got] == list(iter_image_paths((str(tmp_path),)))  # in order
        assert [g.image.pixels.shape[1::-1] for g in got] == [
            sizes[int(os.path.basename(g.path)[0])] for g in got]
        assert vent._reader.next() is None
    finally:
        vent.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("zv-decode")]
