"""Which cuts a job makes: tile sizes from ``--tile``, ``--scales`` and ``--min-size``.

A detector finds an object reliably only from a certain size in its own input (kept per
model as ``ModelSpec.reliable_size``). Cutting alone cannot get a 16 px face there when
the cut is fed at native scale; a smaller cut enlarged to the model's input can. So the
user names the smallest object they care about and this module works out the cut:
``cut = input × min_size / reliable_size``, rounded down so the object lands at or above
the reliable size, never below.

The promise: objects from ``min_size`` to twice it are found with recall ≥ 0.9. The
reliable sizes are measured where it has to hold (``benchmarks/min_size.py``): real faces
in real photos, across cut borders, JPEG-encoded and enlarged by the pipeline itself.
They are far above what a clean canvas the size of the model input suggests (CenterFace:
56 px against 24), because an enlarged small face is a blurred one. Below
``PROMISED_FROM`` no enlargement measured reaches 0.9 (the reliable size then gives the
best recall measured, not the promise); the plan says so.

A job's tiling is a tuple of *scales*, each a cut size ``(w, h)`` in source pixels or
``None`` for the whole image shrunk to the input (the foundation's full-image pass is
the coarsest scale). Every cut is resized to the same input size; boxes come back in
source pixels through ``tiling.to_image_coords``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from zmqvision.models.catalog import ModelSpec
from zmqvision.tiling import plan_scales

Scale = tuple[int, int] | None  # a cut size (w, h) in source pixels; None: whole image

NATIVE, FULL = "native", "full"
# Above this many times the default's inference, a plan gets a warning before it runs.
COSTLY = 10.0
# Smallest cut the planner proposes: below it, the enlargement outgrows what bilinear
# resizing can give a detector (and tile counts explode).
MIN_CUT = 32
# The smallest --min-size (image px) whose promise was measured to hold, per model: below
# it, no enlargement measured found ≥ 90 % (docs/tiling.md, benchmarks/min_size.py).
PROMISED_FROM = {"centerface": 24, "blazeface-short": 16}


def parse_size(text: str, max_side: int | None = None) -> tuple[int, int]:
    """``640`` or ``640x480`` (width x height) as users write them → (width, height);
    ValueError otherwise (the CLI's ``--tile``, serve's ``tile_size=``)."""
    t = str(text).lower().strip()
    try:
        parts = [int(p) for p in t.split("x")] if "x" in t else [int(t)] * 2
    except ValueError:
        parts = []
    if (len(parts) != 2 or min(parts) < 1
            or (max_side is not None and max(parts) > max_side)):
        raise ValueError(f"{text!r} is not a size like 640 or 640x480")
    return parts[0], parts[1]


def parse_scales(text: str, max_side: int | None = None) -> tuple[Scale, ...]:
    """``640,256`` or ``native,full,320x240`` → (w, h) | "native" | "full" each, empty
    parts skipped (the caller says how many it takes); ValueError for a bad size."""
    out: list[Scale] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part in ("native", "full"):
            out.append(part)
        elif part:
            out.append(parse_size(part, max_side))
    return tuple(out)


class PlanError(ValueError):
    """A tiling that cannot be planned (no reliable size known, sizes out of range)."""


def cut_for_min_size(spec: ModelSpec, min_size: float) -> tuple[int, int]:
    """The cut that brings an object of ``min_size`` source pixels to the model's reliable
    size once resized to ``spec.input_size``.

    Larger objects than the reliable size give cuts larger than the input (tiles are
    shrunk, fewer of them): the plan is cheaper than the default, not only dearer.
    """
    if min_size <= 0:
        raise PlanError(f"--min-size must be > 0 pixels, got {min_size}")
    if spec.reliable_size is None:
        raise PlanError(
            f"model {spec.name} has no measured reliable object size, so --min-size cannot "
            f"plan its tiles; choose the cut with --tile instead"
        )
    w, h = spec.input_size
    # The epsilon keeps an exact quotient (480 x 199 / 24 = 3980) from flooring to 3979.
    return (max(MIN_CUT, math.floor(w * min_size / spec.reliable_size + 1e-9)),
            max(MIN_CUT, math.floor(h * min_size / spec.reliable_size + 1e-9)))


def resolve_scales(
    spec: ModelSpec,
    *,
    tile_size: tuple[int, int] | None = None,
    scales: Sequence[tuple[int, int] | str] | None = None,
    min_size: float | None = None,
    full_pass: bool = False,
) -> tuple[Scale, ...]:
    """The cut sizes of a job, in the order given, without duplicates.

    ``scales`` entries are ``(w, h)``, ``"native"`` (the model's input size) or ``"full"``;
    without it the job has one scale: ``tile_size``, else the ``min_size`` plan, else the
    input size. With both ``scales`` and ``min_size``, the planned cut is added to the
    scales. ``full_pass`` adds the whole image.
    """
    if tile_size is not None and min_size is not None:
        raise PlanError("--tile and --min-size both choose the cut; give one of them")
    out: list[Scale] = []
    if scales:
        for s in scales:
            if s == NATIVE:
                out.append(tuple(spec.input_size))
            elif s == FULL:
                out.append(None)
            elif isinstance(s, str):
                raise PlanError(f"unknown scale {s!r}: use sizes like 640 or 640x480, "
                                f"'native' or 'full'")
            else:
                out.append((int(s[0]), int(s[1])))
        if tile_size is not None:
            out.insert(0, tuple(tile_size))
        if min_size is not None:
            out.append(cut_for_min_size(spec, min_size))
    elif tile_size is not None:
        out.append(tuple(tile_size))
    elif min_size is not None:
        out.append(cut_for_min_size(spec, min_size))
    else:
        out.append(tuple(spec.input_size))
    if full_pass:
        out.append(None)
    for s in out:
        if s is not None and min(s) < 1:
            raise PlanError(f"tile size must be at least 1x1, got {s[0]}x{s[1]}")
    unique: list[Scale] = []
    for s in out:
        if s not in unique:
            unique.append(s)
    return tuple(unique)


def one_tile(
    spec: ModelSpec,
    path: str,
    *,
    tile_size: tuple[int, int] | None = None,
    scales: Sequence[tuple[int, int] | str] | None = None,
    min_size: float | None = None,
    full_pass: bool = False,
    overlap: float = 0.2,
) -> bool:
    """Whether the image at ``path`` is a single tile under this tiling, from its header
    alone (a one-tile job wants OpenVINO's LATENCY hint). False when it cannot be read."""
    from zmqvision.io import peek_size

    size = peek_size(path)
    if size is None:
        return False
    cuts = resolve_scales(spec, tile_size=tile_size, scales=scales, min_size=min_size,
                          full_pass=full_pass)
    return len(plan_scales(*size, cuts, overlap)) == 1


def scales_json(scales: Sequence[Scale]) -> list:
    """Scales as the JSON of records and the JobStart: ``[w, h]`` or ``"full"``."""
    return [FULL if s is None else [int(s[0]), int(s[1])] for s in scales]


@dataclass(frozen=True)
class PlanSummary:
    """What a tiling costs on one image size, next to the default tiling."""

    width: int
    height: int
    tiles: int
    default_tiles: int
    cost: float  # inference of the plan ÷ inference of the default (tiles × input area)

    @property
    def costly(self) -> bool:
        return self.cost > COSTLY


def summarize(
    spec: ModelSpec,
    default: ModelSpec,
    scales: Sequence[Scale],
    overlap: float,
    width: int,
    height: int,
) -> PlanSummary:
    """Tiles and relative inference cost of ``scales`` on a ``width`` x ``height`` image.

    The default is the catalog's input size cut at native scale without a full pass; cost
    counts input pixels inferred, which is what the worker's time follows for a
    convolutional detector.
    """
    tiles = len(plan_scales(width, height, scales, overlap))
    base = len(plan_scales(width, height, [default.input_size], overlap))
    area = spec.input_size[0] * spec.input_size[1]
    base_area = default.input_size[0] * default.input_size[1]
    return PlanSummary(width, height, tiles, base, tiles * area / (base * base_area))


def describe(
    spec: ModelSpec,
    scales: Sequence[Scale],
    min_size: float | None = None,
    summary: PlanSummary | None = None,
    name: str | None = None,
) -> str:
    """One paragraph for the terminal: the cuts, their enlargement, and the cost on one
    image (``name``: which one)."""
    in_w, in_h = spec.input_size
    parts = []
    for s in scales:
        if s is None:
            parts.append(f"the whole image shrunk to {in_w}x{in_h}")
            continue
        f = min(in_w / s[0], in_h / s[1])
        how = "fed as is" if s == (in_w, in_h) else (
            f"enlarged x{f:.2f}" if f > 1 else f"shrunk x{f:.2f}")
        parts.append(f"{s[0]}x{s[1]} px cuts {how} to {in_w}x{in_h}")
    text = "tiling: " + "; ".join(parts)
    if min_size is not None and spec.reliable_size is not None:
        cut = cut_for_min_size(spec, min_size)
        f = min(in_w / cut[0], in_h / cut[1])
        text += (f" (objects of {min_size:g} px become {min_size * f:.0f} px; {spec.name} "
                 f"finds them reliably from {spec.reliable_size} px)")
        floor = PROMISED_FROM.get(spec.name)
        if floor is not None and min_size < floor:
            text += (f"\n  note: objects under {floor} px are found less reliably: with "
                     f"{spec.name} no enlargement measured reached 90 % recall there "
                     f"(docs/tiling.md)")
    if summary is not None:
        what = f"{name} ({summary.width}x{summary.height})" if name else (
            f"a {summary.width}x{summary.height} image")
        text += (f"\n  {what}: {summary.tiles} tiles, "
                 f"{summary.cost:.1f}x the inference of the default tiling "
                 f"({summary.default_tiles} tiles)")
    return text
