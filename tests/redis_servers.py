"""Real ``redis-server`` processes for the cache tests: one server, or a cluster of three
masters built with ``redis-cli --cluster create``. Every process is stopped afterwards.

The tests skip, saying why, only when ``redis-server`` is not installed here; CI installs
it (.ci/run), so there they always run.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

NO_REDIS = ("redis-server is not installed on this machine (Debian: apt-get install "
            "redis-server; .ci/run installs it)")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` on 127.0.0.1:``port``, no persistence, in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None, cluster: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port_pair()
        self.cluster = cluster
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        d = self.workdir / str(self.port)
        d.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(d),
                "--protected-mode", "no", "--logfile", str(d / "redis.log")]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     str(d / "nodes.conf"), "--cluster-node-timeout", "2000"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: Redis gone at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def require_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip(NO_REDIS)


def start_cluster(workdir: Path, masters: int = 3, timeout: float = 30.0) -> list[RedisServer]:
    """``masters`` cluster-enabled servers joined by ``redis-cli --cluster create``; returns
    once every node reports ``cluster_state:ok``."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(masters):
            nodes.append(RedisServer(workdir, cluster=True).start())
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        for n in nodes:
            while True:
                info = subprocess.run(["redis-cli", "-p", str(n.port), "cluster", "info"],
                                      capture_output=True, text=True, timeout=5).stdout
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not ok on {n.port}: {info}")
                time.sleep(0.1)
    except BaseException:
        for n in nodes:
            with contextlib.suppress(Exception):
                n.stop()
        raise
    return nodes


@pytest.fixture
def redis_server(tmp_path):
    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path):
    require_redis()
    if shutil.which("redis-cli") is None:
        pytest.skip(NO_REDIS)
    nodes = start_cluster(tmp_path / "cluster")
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()
