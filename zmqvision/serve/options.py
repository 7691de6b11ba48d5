"""Per-request options (query parameters, KServe ``parameters``) → the Pool's settings.

The names are the CLI's (``tile_size``, ``overlap``, ``score_threshold``, ``merge``, …,
dashes or underscores). Every distinct combination is a job of its own at the pool that
the pool keeps while it is used (``Pool.stream_idle_s``), so one server accepts at most
``max_settings`` of them in use at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from zmqvision.scales import parse_scales, parse_size


class BadOptions(ValueError):
    """An option the server cannot use: the answer is 400 with this message."""


MAX_SIDE = 1 << 15  # a cut side; larger is no tiling anyone means


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text, MAX_SIDE)
    except ValueError as exc:
        raise BadOptions(str(exc)) from None


def _ranged(convert, what: str, lo: float, hi: float):
    """A parser of numbers in [lo, hi] (finite bounds: NaN and infinities fail the
    comparison); ``convert`` is int or float."""
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise BadOptions(f"{text!r} is not {what}") from None
        if not lo <= v <= hi:
            raise BadOptions(f"{text!r} is not between {lo} and {hi}")
        return v
    return parse


def _float(lo: float, hi: float):
    return _ranged(float, "a number", lo, hi)


def _int(lo: int, hi: int):
    return _ranged(int, "an integer", lo, hi)


def _bool(text: str) -> bool:
    t = str(text).lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise BadOptions(f"{text!r} is not true or false")


def _merge(text: str) -> str:
    if text not in ("nmm", "nms", "none"):
        raise BadOptions(f"merge {text!r}: one of nmm, nms, none")
    return text


def _scales(text: str) -> tuple:
    try:
        out = parse_scales(text, MAX_SIDE)
    except ValueError as exc:
        raise BadOptions(str(exc)) from None
    if not out or len(out) > 8:
        raise BadOptions(f"scales {text!r}: 1 to 8 sizes, native or full")
    return out


# The job settings a request may choose (the model and its input size are the server's).
PARSERS = {
    "tile_size": _size,
    "overlap": _float(0, 0.95),
    "full_pass": _bool,
    "scales": _scales,
    "min_size": _float(1e-3, 1 << 16),
    "merge": _merge,
    "score_threshold": _float(0, 1),
    "max_pixels": _int(1, 1 << 40),
}
# Request options that are not job settings.
OTHER = {"timeout", "name", "model"}


def normalise(name: str) -> str:
    return name.replace("-", "_")


class SettingsGate:
    """Parses options and remembers the distinct settings in use (at most ``limit``, each
    forgotten once unused for ``idle_s``, as the pool forgets its job): each is a job the
    pool keeps, so a client varying them must not grow the server without bound.
    ``max_pixels`` may only lower the server's own limit."""

    def __init__(self, limit: int, max_pixels: int, idle_s: float = float("inf")) -> None:
        self.limit = limit
        self.max_pixels = max_pixels
        self.idle_s = idle_s
        self._seen: dict[tuple, float] = {}  # settings → when last used
        self._lock = threading.Lock()

    def settings(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The job settings among ``options`` (other known names are skipped; an unknown
        one is a BadOptions)."""
        out: dict[str, Any] = {}
        for raw, value in options.items():
            name = normalise(raw)
            if name in OTHER:
                continue
            parse = PARSERS.get(name)
            if parse is None:
                raise BadOptions(f"unknown option {raw!r} (known: "
                                 f"{', '.join(sorted(PARSERS) + sorted(OTHER))})")
            out[name] = parse(value) if isinstance(value, str) else parse(str(value))
        if out.get("max_pixels", self.max_pixels) > self.max_pixels:
            raise BadOptions(f"max_pixels above the server's limit ({self.max_pixels})")
        out.setdefault("max_pixels", self.max_pixels)
        key = tuple(sorted(out.items()))
        now = time.monotonic()
        with self._lock:
            if key not in self._seen and len(self._seen) >= self.limit:
                for k in [k for k, t in self._seen.items() if now - t > self.idle_s]:
                    del self._seen[k]
                if len(self._seen) >= self.limit:
                    raise BadOptions(f"this server accepts at most {self.limit} distinct "
                                     "option sets in use at once; use one it has seen")
            self._seen[key] = now
        return out


def timeout_of(options: Mapping[str, Any], header: str | None, default: float,
               maximum: float) -> float:
    """The request's deadline in seconds: ``timeout`` option, else the ``Request-Timeout``
    header, else the server's default; at most ``maximum``."""
    raw = options.get("timeout", header)
    if raw is None:
        return default
    return _float(1e-3, maximum)(str(raw))
