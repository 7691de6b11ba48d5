"""Child command lines generated from the config dataclasses.

`zmqvision run` starts its sink and workers as the very commands a user would type
(``python -m zmqvision sink …``). Their arguments are generated here from the fields of
``SinkConfig`` and ``WorkerConfig`` through one table per config, field → flag, so a field
added to a config cannot be left off a child's command line unnoticed: a field missing
from its table raises :class:`UnmappedField` (and a test checks every field). A field a
child must not get is in the table as ``NOT_PASSED``, with the reason beside it. Entries
for fields a config does not have are skipped, so a table may run ahead of its config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


class UnmappedField(LookupError):
    """A config field with no entry in its flag table: add one (a Flag, or NOT_PASSED)."""


@dataclasses.dataclass(frozen=True)
class Flag:
    """One field as a command-line option.

    A value field (``switch`` None) gives ``[name, text]``, omitted when the value is None;
    ``text`` is ``str(value)``, or ``WxH`` for a size pair. A switch field gives ``[name]``
    when the value equals ``switch`` (``Flag("--overwrite", switch=False)`` for
    ``append``) and nothing otherwise.
    """

    name: str
    switch: bool | None = None

    def args(self, value: Any) -> list[str]:
        if self.switch is not None:
            return [self.name] if value is self.switch else []
        if value is None:
            return []
        if isinstance(value, tuple):  # a size: (width, height) → WxH
            return [self.name, "x".join(str(v) for v in value)]
        return [self.name, str(value)]


@dataclasses.dataclass(frozen=True)
class Custom:
    """A field whose flags depend on its value in a way no Flag says."""

    args: Callable[[Any], list[str]]


NOT_PASSED = None  # a field the child does not get: its default serves it

FlagTable = Mapping[str, "Flag | Custom | None"]


def _cache_args(url: str | None) -> list[str]:
    """None: off; "auto": the child's own default (environment or SQLite); else the URL."""
    if url is None:
        return ["--no-cache"]
    return [] if url == "auto" else ["--cache", url]


SINK_FLAGS: FlagTable = {
    "results": Flag("--bind-results"),
    "events": Flag("--bind-events"),
    "events_fallback": Flag("--bind-events-fallback"),
    "out": Flag("--out"),
    "format": Flag("--format"),
    "draw": Flag("--draw"),
    "masks": Flag("--masks"),
    "append": Flag("--overwrite", switch=False),
    "once": Flag("--once", switch=True),
    "status_s": NOT_PASSED,  # event pacing for embedders and tests; the command's default
    "progress_s": NOT_PASSED,  # likewise
    "cache": Custom(_cache_args),
    "curve": Flag("--curve"),
    "insecure": Flag("--insecure", switch=True),
    "embed_file": Flag("--embed-file"),
}

WORKER_FLAGS: FlagTable = {
    "tiles": Flag("--tiles"),
    "results": Flag("--results"),
    "model": Flag("--model"),
    "task": Flag("--task"),
    "input_size": Flag("--input-size"),
    "device": Flag("--device"),
    "threads": Flag("--threads"),
    "hint": Flag("--hint"),
    "requests": Flag("--requests"),
    "score_threshold": Flag("--score-threshold"),
    "heartbeat_s": Flag("--heartbeat"),
    "worker_id": Flag("--id"),
    "curve": Flag("--curve"),
    "stage2": Flag("--stage2"),
    "batch": Flag("--batch"),
    "batch_wait_ms": Flag("--batch-wait-ms"),
}


def unmapped(config_type: type, table: FlagTable) -> list[str]:
    """The fields of ``config_type`` that ``table`` does not name."""
    return [f.name for f in dataclasses.fields(config_type) if f.name not in table]


def command_args(command: str, config: Any, table: FlagTable) -> list[str]:
    """``[command, *flags]`` that make the command build ``config`` again."""
    missing = unmapped(type(config), table)
    if missing:
        raise UnmappedField(f"{type(config).__name__} fields with no command-line flag: "
                            f"{', '.join(missing)} (add each to the table in "
                            f"zmqvision/command_line.py, as a Flag or NOT_PASSED)")
    args = [command]
    for field in dataclasses.fields(config):
        entry = table[field.name]
        if entry is not None:
            args += entry.args(getattr(config, field.name))
    return args
