"""Small helpers the benchmark scripts here share: markdown tables, free ports, a
process's CPU time, one ``zmqvision run``. Scripts import it as a sibling (``python
benchmarks/x.py`` puts this folder first on ``sys.path``); benchmarks/ is not a package."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

# The benchmarks measure the pipeline's work: a result-cache hit would skip it (a second
# repeat would time a lookup). benchmarks/cache.py names its caches explicitly.
os.environ.setdefault("ZMQVISION_RESULTS_CACHE", "off")


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """Cells padded to their column's width, so the table reads in a terminal too."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


SUMMARY = re.compile(r"(\d+) tiles, \d+ detections in ([0-9.]+) s \(([0-9.]+) tiles/s\)")


def run_zmqvision(folder: Path, out: Path, *options: str, cwd: Path | None = None,
                  env: dict | None = None, timeout: float = 1800) -> tuple[int, float]:
    """``zmqvision run FOLDER --out OUT OPTIONS…`` as a user runs it; returns the tiles and
    the tiles/s of its summary line (the sink's JobStart → JobDone). Its events go to a port
    of the OS's choosing, so a watcher or another run cannot disturb it."""
    cmd = [sys.executable, "-m", "zmqvision", "run", str(folder), "--out", str(out),
           "--no-progress", "--events", "tcp://127.0.0.1:0", *options]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{cwd or '.'}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    m = SUMMARY.search(p.stdout)
    if m is None:
        raise RuntimeError(f"no summary line in: {p.stdout}")
    return int(m.group(1)), float(m.group(3))
