"""Small helpers every benchmark script here needs: markdown tables, free ports, a
process's CPU time. Scripts import it as a sibling (``python benchmarks/x.py`` puts this
folder first on ``sys.path``); benchmarks/ is not a package."""

from __future__ import annotations

import os
import socket
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


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
