"""What ``zmqvision cache prune`` will delete, said before it deletes it.

A prune is not undoable and a cache can hold weeks of inference, so the command first
reads what the cut-off selects (count, bytes, oldest and newest entry, the share of the
cache) from the store itself (``stats(before)``), shows it, and only then deletes, with
the same cut-off: what was shown is what goes. The CLI (``zmqvision.cli``) asks on a
terminal, ``--yes`` skips the question, ``--dry-run`` stops after showing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

UNITS = (("w", 604800, "weeks"), ("d", 86400, "days"), ("h", 3600, "hours"),
         ("m", 60, "minutes"), ("s", 1, "seconds"))


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` → seconds. A bare number is refused: the
    unit is the difference between a month and half a minute of results."""
    text = str(text).strip().lower()
    factors = {u: f for u, f, _ in UNITS}
    unit, number = text[-1:], text[:-1]
    if unit not in factors:
        names = ", ".join(f"{u} ({name})" for u, _, name in reversed(UNITS))
        raise ValueError(f"{text!r} has no unit: give one of {names}, e.g. 30d")
    try:
        seconds = float(number) * factors[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    return seconds


def say_duration(seconds: float) -> str:
    """Seconds in the largest unit that says them with at most one decimal: ``30 days``
    (not 4.29 weeks), ``1.5 hours``."""
    for _, factor, name in UNITS:
        value = seconds / factor
        if value >= 1 and abs(value * 10 - round(value * 10)) < 1e-6:
            return f"{value:g} {name}"
    return f"{seconds:g} seconds"


def say_bytes(n: int) -> str:
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


def say_time(t: float | None) -> str:
    return "?" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


@dataclass(frozen=True)
class PrunePlan:
    """The entries made before ``before``: how many, their bytes and dates, of how many."""

    store: str
    before: float
    entries: int
    bytes: int
    oldest: float | None
    newest: float | None
    total: int

    @classmethod
    def of(cls, store, older_than: float, now: float | None = None) -> PrunePlan:
        """Read from ``store`` what ``prune`` of entries older than ``older_than``
        seconds would delete."""
        before = (time.time() if now is None else now) - older_than
        stats = store.stats(before)
        old = stats["prunable"]
        return cls(store=stats["store"], before=before, entries=old["entries"],
                   bytes=old["bytes"], oldest=old["oldest"], newest=old["newest"],
                   total=stats["entries"])

    def describe(self, older_than: float) -> str:
        """One line for the terminal."""
        cut = f"older than {say_duration(older_than)} (made before {say_time(self.before)})"
        if not self.entries:
            return f"{self.store}: no entry is {cut}; {self.total} entries, nothing to delete"
        share = 100 * self.entries / self.total if self.total else 100.0
        return (f"{self.store}: {self.entries} of {self.total} entries ({share:.0f} %), "
                f"{say_bytes(self.bytes)}, are {cut}: oldest {say_time(self.oldest)}, "
                f"newest {say_time(self.newest)}")
