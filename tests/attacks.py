"""What an attacker does and how its cost is measured, shared by the memory-bound tests
(tests/integration/test_attack_memory.py) and benchmarks/attacks.py: a process's RSS, its
RSS once settled, and a subscription sent as raw ZMTP (a ZeroMQ SUB cannot send a 10 MB
topic without crashing itself first)."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

MIB = 1 << 20


def rss(pid: int) -> int:
    """Resident bytes of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def settled(pids: list[int], limit_s: float, every: float = 0.5) -> list[int]:
    """RSS of each once none changed by more than 1 MiB for 2 s (or ``limit_s`` passed)."""
    deadline = time.monotonic() + limit_s
    last, since = [rss(p) for p in pids], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(every)
        now = [rss(p) for p in pids]
        if any(abs(a - b) > MIB for a, b in zip(now, last, strict=True)):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 2.0:
            break
    return [rss(p) for p in pids]


def zmtp_subscribe(endpoint: str, topic: bytes, hold_s: float = 5.0) -> None:
    """Subscribe to ``topic`` speaking ZMTP 3.0 over a plain TCP socket, as a stranger
    would: a ZeroMQ SUB keeps its own trie of what it subscribed to, and a 10 MB topic
    crashes the attacker's process (stack overflow freeing it) before the sink's."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    greeting = b"\xff" + b"\0" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
    body = b"\x01" + topic
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(greeting)
        s.recv(64)
        s.sendall(b"\x04" + bytes([len(ready)]) + ready)
        try:
            s.sendall(b"\x02" + struct.pack(">Q", len(body)) + body)
        except OSError:
            return  # refused as too large: the sink dropped the connection
        time.sleep(hold_s)  # open until the sink has read it (it reads as it publishes)
