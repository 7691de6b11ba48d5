"""Child processes a test or benchmark starts, each in its own session with a log file, and
the guarantee that they are gone afterwards (SIGTERM to the group, SIGKILL after a grace).

Shared by ``conftest.Processes`` (``python -m zmqvision …`` on this host) and
``hosts.Network`` (commands inside simulated hosts), which differ only in how they start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path


class ProcessGroup:
    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def track(self, p: subprocess.Popen, log: Path) -> subprocess.Popen:
        self.procs.append((p, log))
        return p

    def log(self, p: subprocess.Popen) -> str:
        for q, log in self.procs:
            if q is p:
                return log.read_text(errors="replace")
        return ""

    def json_lines(self, p: subprocess.Popen) -> list[dict]:
        """The JSON objects a child printed so far, a line each (``--announce``'s ready
        line, ``watch --json`` events); a line still being written is left out."""
        out = []
        for line in self.log(p).splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait(self, p: subprocess.Popen, timeout: float) -> int:
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process did not finish in {timeout} s; log:\n{self.log(p)}") from None

    def announced(self, p: subprocess.Popen, timeout: float = 120) -> dict:
        """What a child started with ``--announce`` says once it is ready (a sink: the
        endpoints it bound, port 0 resolved; a worker: its id). Waits for that JSON line in
        its log, and fails at once if the child exits first."""
        deadline = time.monotonic() + timeout
        while True:
            for rec in self.json_lines(p):
                if next(iter(rec), None) == "ready":
                    return rec["ready"]
            if p.poll() is not None:
                raise AssertionError(f"exited with {p.returncode} before it announced "
                                     f"itself; log:\n{self.log(p)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready in {timeout} s; log:\n{self.log(p)}")
            time.sleep(0.05)

    def stop(self, p: subprocess.Popen, timeout: float = 15) -> int:
        """SIGTERM (a clean leave), SIGKILL to its whole group after ``timeout``."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        return p.returncode

    def stop_all(self, grace: float = 15) -> None:
        """SIGTERM every group at once, then wait for all together; SIGKILL what is left."""
        for p, _ in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p, _ in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
